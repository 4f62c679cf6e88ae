"""depth: how deep each recipe trains, and how the gradient reaching the first layer shrinks.

Six recipes, from the 1990s default to the modern one, each an MLP of growing depth on
digits trained with the same SGD budget. The gradient ratio is the first weight layer's
gradient norm over the output layer's, measured at initialisation: far below 1 is vanishing,
far above is exploding. A recipe is trainable at a depth when the validation accuracy
reaches ``TRAINABLE_ACCURACY``.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import models
from ._base import (
    Conclusion,
    Config,
    Lab,
    Row,
    Settings,
    final_metrics,
    fit,
    fmt,
    gradient_flow,
    load_split,
    log10_ratio,
    new_figure,
    pct,
)

SETUPS: dict[str, dict[str, Any]] = {
    "sigmoid+default": {"activation": "sigmoid", "init": "default"},
    "tanh+xavier": {"activation": "tanh", "init": "xavier"},
    "relu+default": {"activation": "relu", "init": "default"},
    "relu+he": {"activation": "relu", "init": "he"},
    "relu+he+batchnorm": {"activation": "relu", "init": "he", "norm": "batch"},
    "relu+he+residual": {"activation": "relu", "init": "he", "residual": True},
    # Not in the brief's list: residual nets as they are trained, with the norm that tames
    # the variance growth of unnormalised residual sums (shown by the row above).
    "relu+he+residual+batchnorm": {
        "activation": "relu",
        "init": "he",
        "residual": True,
        "norm": "batch",
    },
}
FULL_DEPTHS = (2, 5, 10, 20, 50, 100)
QUICK_DEPTHS = (2, 20)


@dataclass(frozen=True)
class Budget:
    """What one variant (full or quick) of this experiment runs."""

    width: int
    steps: int


FULL = Budget(width=32, steps=400)
QUICK = Budget(width=32, steps=120)


LR, MOMENTUM = 0.01, 0.9  # one SGD setting for every recipe: a fair, common default
BATCH = 64
FLOW_BATCH = 256  # examples in the one backward pass that measures the gradient ratio
TRAINABLE_ACCURACY = 0.5  # digits: chance is 10%, a shallow net reaches ~95%
EXPLODING_LOG10 = 3.0  # first/last gradient ratio above 10^3 at init: exploding


def build(setup: str, depth: int, width: int) -> torch.nn.Module:
    return models.mlp(64, 10, depth=depth, width=width, **SETUPS[setup])


def configs(settings: Settings) -> list[Config]:
    depths = QUICK_DEPTHS if settings.quick else FULL_DEPTHS
    return [{"setup": s, "depth": d} for s in SETUPS for d in depths]


def run_one(config: Config, settings: Settings) -> Row:
    budget = QUICK if settings.quick else FULL
    split = load_split("digits", seed=settings.seed)
    torch.manual_seed(settings.seed)
    model = build(config["setup"], config["depth"], budget.width)
    flow = gradient_flow(model, split.X_train[:FLOW_BATCH], split.y_train[:FLOW_BATCH])
    history = fit(
        model,
        split.train,
        split.val,
        steps=budget.steps,
        batch_size=BATCH,
        seed=settings.seed,
        optimizer=lambda p: torch.optim.SGD(p, lr=LR, momentum=MOMENTUM),
    )
    metrics = final_metrics(history)
    return {
        "grad_first": flow[0],
        "grad_last": flow[-1],
        "log10_grad_ratio": log10_ratio(flow[0], flow[-1]),
        **metrics,
        "stopped": history.stopped,
        "trainable": bool(metrics["val_accuracy"] >= TRAINABLE_ACCURACY),
    }


def max_trainable_depth(rows: list[Row], setup: str) -> int:
    """The deepest net of this recipe that trained (0 when none did)."""
    return max((r["depth"] for r in rows if r["setup"] == setup and r["trainable"]), default=0)


def checkup_depth(setup: str, settings: Settings) -> int | str:
    """checkup's predicted trainable depth for this recipe, when deepdoctor has checkup."""
    try:  # checkup is built in parallel with the lab; until it lands, say so in the table
        checkup = importlib.import_module("deepdoctor.checkup").checkup
    except (ImportError, AttributeError):
        return "n/a (checkup not available)"
    budget = QUICK if settings.quick else FULL
    split = load_split("digits", seed=settings.seed)
    torch.manual_seed(settings.seed)
    model = build(setup, 10, budget.width)
    batch = (split.X_train[:FLOW_BATCH], split.y_train[:FLOW_BATCH])
    predicted = checkup(model, batch).to_dict().get("depth", {}).get("trainable_depth")
    if isinstance(predicted, int | float) and math.isfinite(predicted):
        return int(round(predicted))
    return "n/a" if predicted is None else str(predicted)


def conclude(rows: list[Row], settings: Settings) -> Conclusion:
    depths = sorted({r["depth"] for r in rows})
    deepest = depths[-1]
    table = []
    for setup in SETUPS:
        own = {r["depth"]: r for r in rows if r["setup"] == setup}
        table.append(
            {
                "recipe": setup,
                "max trainable depth": max_trainable_depth(rows, setup),
                "checkup's predicted depth": checkup_depth(setup, settings),
                **{f"acc@{d}": pct(own[d]["val_accuracy"]) for d in depths if d in own},
                f"log10 grad ratio @{deepest}": fmt(own[deepest]["log10_grad_ratio"])
                if deepest in own
                else "n/a",
            }
        )
    best = {s: max_trainable_depth(rows, s) for s in SETUPS}
    old = max(best["sigmoid+default"], best["tanh+xavier"], best["relu+default"])
    modern = max(best[s] for s in SETUPS if s.startswith("relu+he"))
    sigmoid_ratio = next(
        (
            r["log10_grad_ratio"]
            for r in rows
            if r["setup"] == "sigmoid+default" and r["depth"] == deepest
        ),
        math.nan,
    )
    if modern > old and sigmoid_ratio < -1:
        verdict = "supported"
    elif modern > old or sigmoid_ratio < -1:
        verdict = "partly supported"
    else:
        verdict = "not reproduced"
    summary = (
        "Claim: plain deep nets stop training as depth grows because the gradient reaching the "
        "first layers vanishes (or explodes); matched initialisation, batch norm and residual "
        f"connections push the trainable depth up. Maximum trainable depth over depths "
        f"{', '.join(map(str, depths))} (validation accuracy >= {pct(TRAINABLE_ACCURACY)} on "
        "digits), deepest first: "
        + ", ".join(f"{s} {d}" for s, d in sorted(best.items(), key=lambda kv: -kv[1]))
        + f". At depth {deepest} the sigmoid net's first layer "
        + (
            "gets no gradient at all (it underflows to zero). "
            if sigmoid_ratio == -math.inf
            else f"gets 10^{fmt(sigmoid_ratio)} times the output layer's gradient. "
        )
        + _residual_note(rows, deepest)
        + _batchnorm_note(rows, deepest)
    )
    return Conclusion(
        verdict=verdict,
        summary=summary,
        table=table,
        figures=_figures(rows),
        numbers={"max_trainable_depth": best, "depths": depths},
    )


def _residual_note(rows: list[Row], deepest: int) -> str:
    res = next(
        (r for r in rows if r["setup"] == "relu+he+residual" and r["depth"] == deepest), None
    )
    if res is None or res["trainable"]:
        return ""
    return (
        f"The residual recipe fails at depth {deepest} ({res['stopped']}): without a norm "
        "or a scaled branch (Fixup), He-initialised branches double the activation "
        "variance at every block, so the forward pass itself explodes."
    )


def _batchnorm_note(rows: list[Row], deepest: int) -> str:
    bn = next(
        (r for r in rows if r["setup"] == "relu+he+batchnorm" and r["depth"] == deepest), None
    )
    if bn is None or not bn["log10_grad_ratio"] > EXPLODING_LOG10:
        return ""
    return (
        f" Batch norm alone does not carry the plain net to depth {deepest}: its first layer "
        f"gets 10^{fmt(bn['log10_grad_ratio'])} times the last layer's gradient, the gradient "
        "explosion at initialisation that Yang et al. (2019) derive for deep batch-normalised "
        "nets; residual connections with batch norm avoid it."
    )


def _figures(rows: list[Row]) -> list[tuple[str, Any]]:
    fig, (ax_acc, ax_flow) = new_figure(11, 4, cols=2)
    for setup in SETUPS:
        own = sorted((r for r in rows if r["setup"] == setup), key=lambda r: r["depth"])
        d = [r["depth"] for r in own]
        ax_acc.plot(d, [r["val_accuracy"] for r in own], "o-", label=setup)
        ratio = np.array([r["log10_grad_ratio"] for r in own], dtype=float)
        ax_flow.plot(d, np.clip(ratio, -40, 40), "o-", label=setup)
    ax_acc.axhline(TRAINABLE_ACCURACY, color="grey", ls=":", lw=1)
    ax_acc.set(
        xscale="log",
        xlabel="hidden layers",
        ylabel="validation accuracy",
        title="accuracy against depth",
    )
    ax_flow.set(
        xscale="log",
        xlabel="hidden layers",
        ylabel="log10(|grad first| / |grad last|) at init",
        title="gradient ratio against depth",
    )
    ax_acc.legend(fontsize=7)
    return [("Accuracy and first/last gradient ratio against depth (ratio clipped to +-40)", fig)]


LAB = Lab(
    name="depth",
    title="Depth: how deep each recipe trains",
    source="Glorot & Bengio 2010; He et al. 2015; Ioffe & Szegedy 2015; He et al. 2016",
    claim=(
        "Sigmoid nets with the default initialisation stop training after a few layers "
        "because gradients vanish towards the input; tanh+Xavier and ReLU+He go deeper; "
        "batch norm and residual connections go deeper still."
    ),
    configs=configs,
    run_one=run_one,
    conclude=conclude,
    full_note=(
        f"Full: width {FULL.width}, {FULL.steps} SGD steps (lr {LR}, momentum "
        f"{MOMENTUM}, batch {BATCH}) per net on digits, depths "
        f"{', '.join(map(str, FULL_DEPTHS))}. Quick: width {QUICK.width}, "
        f"{QUICK.steps} steps, depths {', '.join(map(str, QUICK_DEPTHS))}."
    ),
)

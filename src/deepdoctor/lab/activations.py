"""activations: every activation the builders offer, at depth 20 and 50.

Each net gets orthogonal weights scaled by its activation's gain (the builders' matched
initialisation), so what differs is the activation's shape alone: its slope, its mean, and
whether it saturates or dies. Gradient flow is log10 of the first weight layer's gradient
norm over the output layer's at initialisation.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Budget:
    """What one variant (full or quick) of this experiment runs."""

    depths: tuple[int, ...]
    width: int
    steps: int


FULL = Budget(depths=(20, 50), width=32, steps=300)
QUICK = Budget(depths=(20,), width=16, steps=100)


LR, MOMENTUM = 0.01, 0.9
BATCH = 64
FLOW_BATCH = 256
TRAINABLE_ACCURACY = 0.5  # digits: chance is 10%
SATURATING = ("sigmoid", "tanh")  # bounded activations whose flat tails kill the gradient


def configs(settings: Settings) -> list[Config]:
    grid = QUICK if settings.quick else FULL
    return [{"activation": a, "depth": d} for d in grid.depths for a in models.ACTIVATIONS]


def run_one(config: Config, settings: Settings) -> Row:
    grid = QUICK if settings.quick else FULL
    split = load_split("digits", seed=settings.seed)
    torch.manual_seed(settings.seed)
    model = models.mlp(
        64,
        10,
        depth=config["depth"],
        width=grid.width,
        activation=config["activation"],
        init="orthogonal",
    )
    flow = gradient_flow(model, split.X_train[:FLOW_BATCH], split.y_train[:FLOW_BATCH])
    history = fit(
        model,
        split.train,
        split.val,
        steps=grid.steps,
        batch_size=BATCH,
        seed=settings.seed,
        optimizer=lambda p: torch.optim.SGD(p, lr=LR, momentum=MOMENTUM),
    )
    return {
        "log10_grad_ratio": log10_ratio(flow[0], flow[-1]),
        **final_metrics(history),
        "stopped": history.stopped,
    }


def conclude(rows: list[Row], settings: Settings) -> Conclusion:
    depths = sorted({r["depth"] for r in rows})
    table = []
    for act in models.ACTIVATIONS:
        own = {r["depth"]: r for r in rows if r["activation"] == act}
        entry: dict[str, Any] = {"activation": act}
        for d in depths:
            entry[f"log10 grad ratio @{d}"] = fmt(own[d]["log10_grad_ratio"])
            entry[f"val acc @{d}"] = pct(own[d]["val_accuracy"])
        table.append(entry)
    deepest = depths[-1]
    at = {r["activation"]: r for r in rows if r["depth"] == deepest}
    trained = [a for a, r in at.items() if r["val_accuracy"] >= TRAINABLE_ACCURACY]
    sig = at["sigmoid"]
    non_saturating = [a for a in at if a not in SATURATING]
    best_other = max(non_saturating, key=lambda a: at[a]["val_accuracy"])
    sigmoid_worst = sig["val_accuracy"] <= min(r["val_accuracy"] for r in at.values()) + 1e-9
    sigmoid_vanishes = sig["log10_grad_ratio"] < min(
        at[a]["log10_grad_ratio"] for a in non_saturating
    )
    if sigmoid_worst and sigmoid_vanishes and trained:
        verdict = "supported"
    elif sigmoid_vanishes or sigmoid_worst:
        verdict = "partly supported"
    else:
        verdict = "not reproduced"
    summary = (
        "Claim: with a matched initialisation, non-saturating activations (the ReLU family, "
        "ELU, SELU, SiLU, GELU) keep gradients flowing through deep nets while the sigmoid's "
        f"gradient vanishes. At depth {deepest} the sigmoid net's first layer gets "
        f"10^{fmt(sig['log10_grad_ratio'])} of the output layer's gradient and reaches "
        f"{pct(sig['val_accuracy'])} validation accuracy; the best non-saturating activation, "
        f"{best_other}, reaches {pct(at[best_other]['val_accuracy'])} (gradient ratio "
        f"10^{fmt(at[best_other]['log10_grad_ratio'])}). Nets reaching "
        f"{pct(TRAINABLE_ACCURACY)} at depth {deepest}: {', '.join(trained) or 'none'}."
    )
    fig, (ax_flow, ax_acc) = new_figure(11, 4, cols=2)
    x = np.arange(len(models.ACTIVATIONS))
    bar = 0.8 / len(depths)
    for i, d in enumerate(depths):
        own = {r["activation"]: r for r in rows if r["depth"] == d}
        ratios = np.clip([own[a]["log10_grad_ratio"] for a in models.ACTIVATIONS], -40, 40)
        ax_flow.bar(x + i * bar, ratios, bar, label=f"depth {d}")
        ax_acc.bar(
            x + i * bar,
            [own[a]["val_accuracy"] for a in models.ACTIVATIONS],
            bar,
            label=f"depth {d}",
        )
    for ax in (ax_flow, ax_acc):
        ax.set_xticks(x + bar * (len(depths) - 1) / 2, list(models.ACTIVATIONS), rotation=45)
        ax.legend(fontsize=7)
    ax_flow.set(ylabel="log10 grad ratio first/last at init", title="gradient flow")
    ax_acc.set(ylabel="validation accuracy", title="accuracy")
    return Conclusion(
        verdict=verdict,
        summary=summary,
        table=table,
        figures=[
            ("Gradient flow at initialisation and accuracy after training, per activation", fig)
        ],
        numbers={"trained_at_deepest": trained, "deepest": deepest},
    )


LAB = Lab(
    name="activations",
    title="Activations: gradient flow and accuracy at depth 20 and 50",
    source="Glorot & Bengio 2010; Nair & Hinton 2010; Clevert et al. 2016; Klambauer et al. "
    "2017; Hendrycks & Gimpel 2016",
    claim=(
        "Saturating activations (sigmoid above all) make gradients vanish in deep nets; "
        "the ReLU family and its smooth successors keep them flowing and train deeper."
    ),
    configs=configs,
    run_one=run_one,
    conclude=conclude,
    full_note=(
        f"Full: depths {FULL.depths}, width {FULL.width}, {FULL.steps} SGD "
        f"steps (lr {LR}, momentum {MOMENTUM}) on digits, orthogonal init with each "
        f"activation's gain. Quick: depth 20 only, width {QUICK.width}, "
        f"{QUICK.steps} steps."
    ),
)

"""init: a 30-layer ReLU net converges with He initialisation and stalls with Xavier's.

Xavier's variance 1/fan_avg keeps a *linear* (or tanh) layer's signal steady; a ReLU zeroes
half of it, so every layer halves the variance and 30 layers leave 2^-30 of it. He's
variance 2/fan_in compensates exactly (He et al. 2015, Figure 3, a 30-layer conv net).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .. import models
from ._base import (
    Conclusion,
    Config,
    Lab,
    Row,
    Settings,
    fit,
    fmt,
    gradient_flow,
    load_split,
    log10_ratio,
    new_figure,
    pct,
)

DEPTH = 30  # the paper's depth


@dataclass(frozen=True)
class Budget:
    """What one variant (full or quick) of this experiment runs."""

    width: int
    steps: int
    seeds: int


FULL = Budget(width=64, steps=600, seeds=3)
QUICK = Budget(width=32, steps=150, seeds=1)


LR, MOMENTUM = 0.003, 0.9  # SGD with momentum as in the paper; 0.01 is too hot at depth 30
BATCH = 64
FLOW_BATCH = 256
CONVERGED_LOSS = 0.5  # converged: the training loss fell below half of ln(10) (chance)
STALLED_LOSS = 0.95  # stalled: the training loss is still above 95% of ln(10)


def signal_ratio(model: torch.nn.Module, X: torch.Tensor) -> float:
    """log10 of the last hidden layer's activation std over the input's std, at init."""
    seen: list[torch.Tensor] = []
    out_layer: torch.nn.Module = model.get_submodule("out")
    handle = out_layer.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            model(X)
    finally:
        handle.remove()
    return math.log10(max(float(seen[0].std()), 1e-30) / float(X.std()))


def configs(settings: Settings) -> list[Config]:
    budget = QUICK if settings.quick else FULL
    return [{"init": init, "run": r} for init in ("he", "xavier") for r in range(budget.seeds)]


def run_one(config: Config, settings: Settings) -> Row:
    budget = QUICK if settings.quick else FULL
    split = load_split("digits", seed=settings.seed)
    seed = settings.seed + config["run"]
    torch.manual_seed(seed)
    model = models.mlp(
        64, 10, depth=DEPTH, width=budget.width, activation="relu", init=config["init"]
    )
    flow = gradient_flow(model, split.X_train[:FLOW_BATCH], split.y_train[:FLOW_BATCH])
    signal = signal_ratio(model, split.X_train[:FLOW_BATCH])
    history = fit(
        model,
        split.train,
        split.val,
        steps=budget.steps,
        batch_size=BATCH,
        seed=seed,
        eval_every=max(1, budget.steps // 20),
        optimizer=lambda p: torch.optim.SGD(p, lr=LR, momentum=MOMENTUM),
    )
    return {
        "log10_grad_ratio": log10_ratio(flow[0], flow[-1]),
        "log10_signal_ratio": signal,
        "initial_loss": history.loss[0],
        "train_loss": history.final["train_loss"],
        "val_accuracy": history.final["val_accuracy"],
        "eval_steps": history.metric("step"),
        "train_loss_curve": history.metric("train_loss"),
    }


def conclude(rows: list[Row], settings: Settings) -> Conclusion:
    by = {i: [r for r in rows if r["init"] == i] for i in ("he", "xavier")}
    mean = {
        i: {
            k: float(np.mean([r[k] for r in rs]))
            for k in ("train_loss", "val_accuracy", "log10_grad_ratio", "log10_signal_ratio")
        }
        for i, rs in by.items()
    }
    chance = math.log(10)
    he_converges = mean["he"]["train_loss"] < CONVERGED_LOSS * chance
    xavier_stalls = mean["xavier"]["train_loss"] > STALLED_LOSS * chance
    if he_converges and xavier_stalls:
        verdict = "supported"
    elif mean["he"]["val_accuracy"] > mean["xavier"]["val_accuracy"]:
        verdict = "partly supported"
    else:
        verdict = "not reproduced"
    table = [
        {
            "init": i,
            "runs": len(by[i]),
            "final train loss": fmt(mean[i]["train_loss"]),
            "val accuracy": pct(mean[i]["val_accuracy"]),
            "log10 signal std last hidden/input at init": fmt(mean[i]["log10_signal_ratio"]),
            "log10 grad ratio first/last at init": fmt(mean[i]["log10_grad_ratio"]),
        }
        for i in by
    ]
    summary = (
        f"Claim: a {DEPTH}-layer ReLU net converges with He initialisation and stalls with "
        f"Xavier's. Here (digits, mean of {len(by['he'])} seeds) He brings the training loss "
        f"from ln 10 = {fmt(chance)} to {fmt(mean['he']['train_loss'])} "
        f"({pct(mean['he']['val_accuracy'])} validation accuracy); Xavier ends at "
        f"{fmt(mean['xavier']['train_loss'])} ({pct(mean['xavier']['val_accuracy'])}). Why: at "
        "initialisation the last hidden layer carries 10^"
        f"{fmt(mean['xavier']['log10_signal_ratio'])} of the input's scale with Xavier (each "
        f"ReLU layer halves the variance) and 10^{fmt(mean['he']['log10_signal_ratio'])} with "
        "He, so Xavier's output hardly depends on the input. (The weight-gradient ratio "
        f"first/last is 10^{fmt(mean['xavier']['log10_grad_ratio'])} with Xavier: the shrinking "
        "backward signal is offset by the shrinking forward activations it multiplies.) "
        + (
            "He converges and Xavier stalls, as published."
            if verdict == "supported"
            else "Not fully reproduced here: "
            + ("He did not converge within the budget. " if not he_converges else "")
            + (
                "Xavier did not stall: momentum SGD still found a way down. "
                if not xavier_stalls
                else ""
            )
        )
    )
    fig, ax = new_figure()
    for r in rows:
        ax.plot(
            r["eval_steps"],
            r["train_loss_curve"],
            color="tab:blue" if r["init"] == "he" else "tab:red",
            label=f"{r['init']} (run {r['run']})",
        )
    ax.axhline(chance, color="grey", ls=":", lw=1)
    ax.set(xlabel="step", ylabel="training loss", title=f"{DEPTH}-layer ReLU MLP on digits")
    ax.legend(fontsize=7)
    return Conclusion(
        verdict=verdict,
        summary=summary,
        table=table,
        figures=[("Training loss: He (blue) against Xavier (red); dotted: ln 10", fig)],
        published=[
            {
                "source": "He et al. 2015, Fig. 3",
                "result": "30-layer ReLU net: He init converges, Xavier stalls completely",
            }
        ],
        numbers={"mean": mean, "he_converges": he_converges, "xavier_stalls": xavier_stalls},
    )


LAB = Lab(
    name="init",
    title="Initialisation: He against Xavier in a 30-layer ReLU net",
    source="He, Zhang, Ren & Sun, Delving Deep into Rectifiers (2015), Fig. 3",
    claim=(
        "A 30-layer ReLU network initialised with He's variance 2/fan_in converges; the "
        "same network with Xavier's initialisation stalls and does not learn at all."
    ),
    configs=configs,
    run_one=run_one,
    conclude=conclude,
    full_note=(
        f"Full: {DEPTH}-layer MLP, width {FULL.width}, {FULL.steps} SGD steps "
        f"(lr {LR}, momentum {MOMENTUM}) on digits, {FULL.seeds} seeds; the paper "
        f"used a 30-layer conv net on ImageNet. Quick: width {QUICK.width}, "
        f"{QUICK.steps} steps, 1 seed."
    ),
)

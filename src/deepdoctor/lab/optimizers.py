"""optimizers: SGD, SGD with momentum, RMSprop and Adam on the same deep net.

The net is a 10-layer tanh MLP with PyTorch's default initialisation (variance 1/(3 fan_in),
so the signal and the gradient shrink layer by layer). Plain SGD moves every weight by the
same multiple of a gradient that is tiny near the input; RMSprop and Adam divide each
gradient by its running scale, so the early layers move as fast as the late ones. The full
variant gives each optimizer its best learning rate from a small grid, so the comparison is
between tuned optimizers, not between learning rates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
    load_split,
    new_figure,
    pct,
)

OPTIMIZERS: dict[str, Callable[[Any, float], torch.optim.Optimizer]] = {
    "sgd": lambda p, lr: torch.optim.SGD(p, lr=lr),
    "momentum": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9),
    "rmsprop": lambda p, lr: torch.optim.RMSprop(p, lr=lr),
    "adam": lambda p, lr: torch.optim.Adam(p, lr=lr),
}
# Learning-rate grids around each optimizer's customary value; quick uses the middle one.
LR_GRID = {
    "sgd": (0.03, 0.1, 0.3),
    "momentum": (0.003, 0.01, 0.03),
    "rmsprop": (1e-4, 1e-3, 1e-2),
    "adam": (1e-4, 1e-3, 1e-2),
}
DEPTH = 10


@dataclass(frozen=True)
class Budget:
    """What one variant (full or quick) of this experiment runs."""

    width: int
    steps: int


FULL = Budget(width=32, steps=500)
QUICK = Budget(width=32, steps=150)


BATCH = 64


def configs(settings: Settings) -> list[Config]:
    if settings.quick:
        return [{"optimizer": o, "lr": grid[1]} for o, grid in LR_GRID.items()]
    return [{"optimizer": o, "lr": lr} for o, grid in LR_GRID.items() for lr in grid]


def run_one(config: Config, settings: Settings) -> Row:
    budget = QUICK if settings.quick else FULL
    split = load_split("digits", seed=settings.seed)
    torch.manual_seed(settings.seed)
    model = models.mlp(64, 10, depth=DEPTH, width=budget.width, activation="tanh")
    make = OPTIMIZERS[config["optimizer"]]
    history = fit(
        model,
        split.train,
        split.val,
        steps=budget.steps,
        batch_size=BATCH,
        seed=settings.seed,
        eval_every=max(1, budget.steps // 20),
        optimizer=lambda p: make(p, config["lr"]),
    )
    return {
        **final_metrics(history),
        "stopped": history.stopped,
        "eval_steps": history.metric("step"),
        "train_loss_curve": history.metric("train_loss"),
    }


def best_runs(rows: list[Row]) -> dict[str, Row]:
    """Each optimizer's run with the lowest final training loss."""

    def key(r: Row) -> float:
        return r["train_loss"] if math.isfinite(r["train_loss"]) else math.inf

    return {o: min((r for r in rows if r["optimizer"] == o), key=key) for o in OPTIMIZERS}


def conclude(rows: list[Row], settings: Settings) -> Conclusion:
    best = best_runs(rows)
    customary = {
        o: next(r for r in rows if r["optimizer"] == o and r["lr"] == grid[1])
        for o, grid in LR_GRID.items()
    }
    table = [
        {
            "optimizer": o,
            "customary lr": LR_GRID[o][1],
            "train loss at customary lr": fmt(customary[o]["train_loss"]),
            "best lr": r["lr"],
            "train loss at best lr": fmt(r["train_loss"]),
            "val accuracy at best lr": pct(r["val_accuracy"]),
        }
        for o, r in best.items()
    ]
    loss = {o: r["train_loss"] for o, r in best.items()}
    usual = {o: r["train_loss"] for o, r in customary.items()}
    adaptive_win = max(loss["rmsprop"], loss["adam"]) < loss["sgd"]
    adaptive_win_usual = max(usual["rmsprop"], usual["adam"]) < usual["sgd"]
    momentum_helps = loss["momentum"] < loss["sgd"]
    if adaptive_win and momentum_helps:
        verdict = "supported"
    elif adaptive_win or adaptive_win_usual or momentum_helps:
        verdict = "partly supported"
    else:
        verdict = "not reproduced"
    at_edge = [o for o, r in best.items() if r["lr"] in (LR_GRID[o][0], LR_GRID[o][-1])]
    budget = QUICK if settings.quick else FULL
    summary = (
        f"Claim: on a deep net whose gradients shrink towards the input, momentum and the "
        f"adaptive methods (RMSprop, Adam) train faster than plain SGD. {DEPTH}-layer tanh MLP "
        f"on digits, {budget.steps} steps. At each optimizer's customary learning rate the "
        "final training loss is "
        + ", ".join(f"{o} {fmt(v)}" for o, v in usual.items())
        + (
            ": the adaptive methods win. "
            if adaptive_win_usual
            else ": the adaptive methods do not win. "
        )
        + (
            "At the best learning rate of each grid: "
            + ", ".join(f"{o} {fmt(v)} (lr {best[o]['lr']})" for o, v in loss.items())
            + "; validation accuracy "
            + ", ".join(f"{o} {pct(r['val_accuracy'])}" for o, r in best.items())
            + ". "
            if len(rows) > len(LR_GRID)
            else ""
        )
        + (
            "Not reproduced once plain SGD's learning rate is tuned: a large step makes up "
            "for the small gradients, so here the adaptive methods' advantage is robustness "
            "to the learning rate rather than speed. "
            if not adaptive_win
            else ""
        )
        + ("Momentum beats plain SGD. " if momentum_helps else "Momentum does not beat SGD. ")
        + (
            f"Best learning rate at the edge of its grid for {', '.join(at_edge)}: a wider "
            "grid might do better still."
            if at_edge and len(rows) > len(LR_GRID)
            else ""
        )
    )
    fig, ax = new_figure()
    for o, r in best.items():
        ax.plot(r["eval_steps"], r["train_loss_curve"], label=f"{o} (lr {r['lr']})")
    ax.set(
        xlabel="step", ylabel="training loss", title=f"{DEPTH}-layer tanh MLP, default init, digits"
    )
    ax.legend(fontsize=8)
    return Conclusion(
        verdict=verdict,
        summary=summary,
        table=table,
        figures=[("Training loss of each optimizer at its best learning rate", fig)],
        numbers={
            "final_train_loss": loss,
            "customary_train_loss": usual,
            "best_lr": {o: r["lr"] for o, r in best.items()},
        },
    )


LAB = Lab(
    name="optimizers",
    title="Optimizers: SGD, momentum, RMSprop and Adam on the same deep net",
    source="Sutskever et al. 2013 (momentum); Tieleman & Hinton 2012 (RMSprop); "
    "Kingma & Ba 2015 (Adam)",
    claim=(
        "On a deep net with poorly scaled gradients, momentum speeds up SGD and the "
        "adaptive methods RMSprop and Adam, which rescale each parameter's step, train "
        "fastest."
    ),
    configs=configs,
    run_one=run_one,
    conclude=conclude,
    full_note=(
        f"Full: learning rates {LR_GRID}, {FULL.steps} steps each, width "
        f"{FULL.width}. Quick: the middle learning rate only, {QUICK.steps} "
        "steps."
    ),
)

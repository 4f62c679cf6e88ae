"""capacity: a width sweep on a small training set.

A 2-hidden-layer MLP's cost grows with its connections: parameters = connections + biases,
and a forward pass costs two FLOPs per connection per example (a multiply and an add),
counted here by ``torch.utils.flop_counter.FlopCounterMode``. With 500 MNIST-1D training
signals, a net of width 1 or 2 cannot fit them (underfitting: train and validation both poor),
and a net of width hundreds fits them perfectly while validation lags (overfitting: a large
gap). Whether validation accuracy actually *falls* at large width is the open part: the
classic U-curve, or the modern "double descent" where it keeps rising.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

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


@dataclass(frozen=True)
class Budget:
    """What one variant (full or quick) of this experiment runs."""

    widths: tuple[int, ...]
    subset: int
    steps: int


FULL = Budget(widths=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), subset=500, steps=1000)
QUICK = Budget(widths=(1, 16, 256), subset=500, steps=300)


FEATURES = 40  # MNIST-1D's signal length
DEPTH = 2
LR = 1e-3  # Adam: fits every width to its capacity within the budget
BATCH = 32
UNDERFIT_ACCURACY = 0.3  # train accuracy below this: the net cannot fit its training set
FIT_ACCURACY = 0.95  # train accuracy above this: the net has all but memorised its data
OVERFIT_GAP = 0.1  # train minus validation accuracy above this is a large gap
LOSS_RISE = 1.2  # validation loss 20% above its minimum at the largest width: a U in loss


def connections(model: torch.nn.Module) -> int:
    return sum(
        m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)
    )


def forward_flops(model: torch.nn.Module, n_features: int) -> int:
    """FLOPs of one example's forward pass, as torch's FLOP counter sees them."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, n_features))
    return int(counter.get_total_flops())


def configs(settings: Settings) -> list[Config]:
    grid = QUICK if settings.quick else FULL
    return [{"width": w} for w in grid.widths]


def run_one(config: Config, settings: Settings) -> Row:
    grid = QUICK if settings.quick else FULL
    split = load_split("mnist1d", seed=settings.seed, subset=grid.subset)
    torch.manual_seed(settings.seed)
    model = models.mlp(FEATURES, 10, depth=DEPTH, width=config["width"])
    row: Row = {
        "connections": connections(model),
        "parameters": models.n_parameters(model),
        "flops": forward_flops(model, FEATURES),
    }
    history = fit(
        model,
        split.train,
        split.val,
        steps=grid.steps,
        batch_size=BATCH,
        seed=settings.seed,
        optimizer=lambda p: torch.optim.Adam(p, lr=LR),
    )
    metrics = final_metrics(history)
    return {**row, **metrics, "gap": metrics["train_accuracy"] - metrics["val_accuracy"]}


def conclude(rows: list[Row], settings: Settings) -> Conclusion:
    rows = sorted(rows, key=lambda r: r["width"])
    flops_exact = all(r["flops"] == 2 * r["connections"] for r in rows)
    params_exact = all(r["parameters"] == r["connections"] + 2 * r["width"] + 10 for r in rows)
    small, large = rows[0], rows[-1]
    best = max(rows, key=lambda r: r["val_accuracy"])
    best_loss = min(rows, key=lambda r: r["val_loss"])
    underfits = small["train_accuracy"] < UNDERFIT_ACCURACY
    overfits = large["train_accuracy"] >= FIT_ACCURACY and large["gap"] > OVERFIT_GAP
    u_curve = large["val_accuracy"] < best["val_accuracy"] - 0.02
    if flops_exact and params_exact and underfits and overfits:
        verdict = "supported"
    elif flops_exact and params_exact and (underfits or overfits):
        verdict = "partly supported"
    else:
        verdict = "not reproduced"
    grid = QUICK if settings.quick else FULL
    summary = (
        f"Claim: parameters and FLOPs grow with connections; a small net underfits and a large "
        f"one overfits a small training set. FLOPs per example = 2 x connections for every "
        f"width: {flops_exact}; parameters = connections + biases: {params_exact}. On "
        f"{grid.subset} MNIST-1D signals, width {small['width']} reaches "
        f"{pct(small['train_accuracy'])} train / {pct(small['val_accuracy'])} validation "
        f"accuracy ({'underfitting' if underfits else 'not underfitting'}); width "
        f"{large['width']} ({large['parameters']:,} parameters) reaches "
        f"{pct(large['train_accuracy'])} / {pct(large['val_accuracy'])}, a gap of "
        f"{pct(large['gap'])} ({'overfitting' if overfits else 'no clear overfitting'}). "
        f"Validation accuracy peaks at width {best['width']} ({pct(best['val_accuracy'])}) "
        + (
            "and falls beyond it: the classic U-curve."
            if u_curve
            else "and does not fall at the largest width: the gap grows, but the wide net still "
            "generalises as well as any (the 'double descent' regime, Belkin et al. 2019), so "
            "the classic U-shaped validation curve is not reproduced here."
        )
        + (
            f" In validation loss the U is there: lowest at width {best_loss['width']} "
            f"({fmt(best_loss['val_loss'])}), {fmt(large['val_loss'])} at width "
            f"{large['width']}, as the wide nets grow confident on the examples they get wrong."
            if large["val_loss"] > best_loss["val_loss"] * LOSS_RISE
            else ""
        )
    )
    fig, (ax_cost, ax_acc) = new_figure(11, 4, cols=2)
    w = [r["width"] for r in rows]
    ax_cost.loglog(
        [r["connections"] for r in rows], [r["parameters"] for r in rows], "o-", label="parameters"
    )
    ax_cost.loglog(
        [r["connections"] for r in rows],
        [r["flops"] for r in rows],
        "s-",
        label="forward FLOPs / example",
    )
    ax_cost.set(xlabel="connections", title="cost grows with connections")
    ax_cost.legend(fontsize=8)
    ax_acc.semilogx(w, [r["train_accuracy"] for r in rows], "o-", label="train")
    ax_acc.semilogx(w, [r["val_accuracy"] for r in rows], "s-", label="validation")
    ax_acc.set(xlabel="width", ylabel="accuracy", title=f"{grid.subset} MNIST-1D signals")
    ax_acc.legend(fontsize=8)
    table = [
        {
            "width": r["width"],
            "connections": r["connections"],
            "parameters": r["parameters"],
            "FLOPs/example": r["flops"],
            "train accuracy": pct(r["train_accuracy"]),
            "val accuracy": pct(r["val_accuracy"]),
            "gap": pct(r["gap"]),
            "val loss": fmt(r["val_loss"]),
        }
        for r in rows
    ]
    numbers: dict[str, Any] = {
        "flops_exact": flops_exact,
        "params_exact": params_exact,
        "underfits": underfits,
        "overfits": overfits,
        "u_curve": u_curve,
        "best_width": best["width"],
        "gaps": [r["gap"] for r in rows],
        "widths": w,
        "flops_per_connection": float(np.mean([r["flops"] / r["connections"] for r in rows])),
    }
    return Conclusion(
        verdict=verdict,
        summary=summary,
        table=table,
        figures=[("Cost and fit against width", fig)],
        numbers=numbers,
    )


LAB = Lab(
    name="capacity",
    title="Capacity: cost, underfitting and overfitting against width",
    source="Goodfellow, Bengio & Courville, Deep Learning (2016), ch. 5.2; Belkin et al. 2019",
    claim=(
        "Parameters and FLOPs grow with the number of connections; too little capacity "
        "underfits, too much overfits a small training set."
    ),
    configs=configs,
    run_one=run_one,
    conclude=conclude,
    full_note=(
        f"Full: widths {FULL.widths}, {FULL.subset} MNIST-1D training signals, "
        f"{FULL.steps} Adam steps. Quick: widths {QUICK.widths}, "
        f"{QUICK.steps} steps."
    ),
)

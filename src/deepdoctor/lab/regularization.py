"""regularization: a wide net on a small training set, with and without each regularizer.

A 2-hidden-layer ReLU MLP of width 512 (~290k parameters) on 500 MNIST-1D signals memorises
its training set and generalises poorly (MNIST-1D is built to be hard for MLPs); weight decay,
dropout, early stopping and data augmentation (Gaussian jitter plus shifts of up to one
sample) each narrow the train-validation gap. The choice
between them is made the honest way, by K-fold cross-validation on the training subset
(scikit-learn's KFold), and then checked against the held-out validation set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import KFold

from .. import models
from ..remedies.data import jitter_and_shift
from ..training import TensorData, evaluate
from ._base import (
    Conclusion,
    Config,
    Lab,
    Row,
    Settings,
    fit,
    load_split,
    new_figure,
    pct,
)

METHODS = ("none", "weight_decay", "dropout", "early_stopping", "data_augmentation")


@dataclass(frozen=True)
class Budget:
    """What one variant (full or quick) of this experiment runs."""

    subset: int
    width: int
    steps: int
    folds: int


FULL = Budget(subset=500, width=512, steps=800, folds=5)
QUICK = Budget(subset=500, width=128, steps=200, folds=2)


SIGNAL = (1, 40)  # MNIST-1D's (channels, length), for shifting
LR, MOMENTUM = 0.01, 0.9
BATCH = 32
WEIGHT_DECAY = 5e-3  # strong enough to matter on 500 samples, weak enough not to underfit
DROPOUT = 0.5  # Srivastava et al.'s rate for hidden units
PATIENCE = 3  # early stopping: evaluations without a better validation loss
EVALS = 20  # evaluations per run: the early-stopping granularity
TIE = 0.01  # accuracies within one point count as a tie when checking the CV choice


def _augment(x: torch.Tensor) -> torch.Tensor:
    """Jitter and shift the signals, then flatten them back for the MLP."""
    return jitter_and_shift(x.reshape(-1, *SIGNAL)).reshape(len(x), -1)


def configs(settings: Settings) -> list[Config]:
    grid = QUICK if settings.quick else FULL
    folds: list[Any] = ["holdout", *range(grid.folds)]
    return [{"method": m, "fold": f} for m in METHODS for f in folds]


def _data(fold: Any, settings: Settings) -> tuple[TensorData, TensorData]:
    grid = QUICK if settings.quick else FULL
    split = load_split("mnist1d", seed=settings.seed, subset=grid.subset)
    if fold == "holdout":
        return split.train, split.val
    X, y = split.train
    kfold = KFold(n_splits=grid.folds, shuffle=True, random_state=settings.seed)
    train_idx, val_idx = list(kfold.split(X.numpy()))[fold]
    tr, va = torch.as_tensor(train_idx), torch.as_tensor(val_idx)
    return (X[tr], y[tr]), (X[va], y[va])


def run_one(config: Config, settings: Settings) -> Row:
    grid = QUICK if settings.quick else FULL
    train_data, val_data = _data(config["fold"], settings)
    method = config["method"]
    torch.manual_seed(settings.seed)
    model = models.mlp(
        40, 10, depth=2, width=grid.width, dropout=DROPOUT if method == "dropout" else 0.0
    )
    decay = WEIGHT_DECAY if method == "weight_decay" else 0.0
    history = fit(
        model,
        train_data,
        val_data,
        steps=grid.steps,
        batch_size=BATCH,
        seed=settings.seed,
        eval_every=max(1, grid.steps // EVALS),
        early_stopping=PATIENCE if method == "early_stopping" else None,
        augment=_augment if method == "data_augmentation" else None,
        optimizer=lambda p: torch.optim.SGD(p, lr=LR, momentum=MOMENTUM, weight_decay=decay),
    )
    # Early stopping restored the best weights: measure what the model is now.
    loss_fn = torch.nn.CrossEntropyLoss()
    train_loss, train_acc = evaluate(model, *train_data, loss_fn, "classification")
    val_loss, val_acc = evaluate(model, *val_data, loss_fn, "classification")
    return {
        "train_accuracy": train_acc,
        "val_accuracy": val_acc,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "gap": train_acc - val_acc,
        "steps_run": history.steps,
    }


def conclude(rows: list[Row], settings: Settings) -> Conclusion:
    holdout = {r["method"]: r for r in rows if r["fold"] == "holdout"}
    cv = {
        m: float(
            np.mean(
                [r["val_accuracy"] for r in rows if r["method"] == m and r["fold"] != "holdout"]
            )
        )
        for m in METHODS
    }
    chosen = max(METHODS, key=lambda m: cv[m])
    best_holdout = max(holdout[m]["val_accuracy"] for m in METHODS)
    confirmed = holdout[chosen]["val_accuracy"] >= best_holdout - TIE
    narrower = [m for m in METHODS[1:] if holdout[m]["gap"] < holdout["none"]["gap"]]
    table = [
        {
            "method": m,
            "train accuracy": pct(holdout[m]["train_accuracy"]),
            "val accuracy": pct(holdout[m]["val_accuracy"]),
            "train-val gap": pct(holdout[m]["gap"]),
            "K-fold CV accuracy": pct(cv[m]),
            "steps run": holdout[m]["steps_run"],
        }
        for m in METHODS
    ]
    if len(narrower) >= 3 and confirmed:
        verdict = "supported"
    elif narrower:
        verdict = "partly supported"
    else:
        verdict = "not reproduced"
    grid = QUICK if settings.quick else FULL
    folds = grid.folds
    summary = (
        f"Claim: a wide net on a small training set overfits; regularizers narrow the "
        f"train-validation gap, and K-fold cross-validation picks among them. Width "
        f"{grid.width} on {grid.subset} MNIST-1D signals: without regularization the gap is "
        f"{pct(holdout['none']['gap'])} (train {pct(holdout['none']['train_accuracy'])}, "
        f"validation {pct(holdout['none']['val_accuracy'])}); "
        + ", ".join(f"{m} {pct(holdout[m]['gap'])}" for m in METHODS[1:])
        + f". {len(narrower)} of {len(METHODS) - 1} regularizers narrowed it. {folds}-fold "
        f"cross-validation on the training subset chooses {chosen} (CV accuracy "
        f"{pct(cv[chosen])}); on the held-out set it scores "
        f"{pct(holdout[chosen]['val_accuracy'])} against the best {pct(best_holdout)}, so the "
        f"choice is {'confirmed' if confirmed else 'not confirmed'} (tie within "
        f"{pct(TIE)})."
    )
    fig, ax = new_figure()
    x = np.arange(len(METHODS))
    ax.bar(x - 0.27, [holdout[m]["train_accuracy"] for m in METHODS], 0.27, label="train")
    ax.bar(x, [holdout[m]["val_accuracy"] for m in METHODS], 0.27, label="validation")
    ax.bar(x + 0.27, [cv[m] for m in METHODS], 0.27, label=f"{folds}-fold CV")
    ax.set_xticks(x, list(METHODS), rotation=20)
    ax.set(ylabel="accuracy", ylim=(0, 1.05), title="train, validation and CV accuracy")
    ax.legend(fontsize=8)
    return Conclusion(
        verdict=verdict,
        summary=summary,
        table=table,
        figures=[
            (
                "Train against validation accuracy of each regularizer, and "
                "its cross-validated accuracy",
                fig,
            )
        ],
        numbers={
            "gap": {m: holdout[m]["gap"] for m in METHODS},
            "cv": cv,
            "chosen": chosen,
            "confirmed": confirmed,
            "narrower": narrower,
        },
    )


LAB = Lab(
    name="regularization",
    title="Regularization: closing the train-validation gap of a wide net on little data",
    source="Krogh & Hertz 1992 (weight decay); Srivastava et al. 2014 (dropout); Prechelt "
    "1998 (early stopping); Simard et al. 2003 (augmentation)",
    claim=(
        "A wide net trained on a small set fits it perfectly and generalises worse; weight "
        "decay, dropout, early stopping and data augmentation each narrow the gap, and "
        "cross-validation is how to choose between them."
    ),
    configs=configs,
    run_one=run_one,
    conclude=conclude,
    full_note=(
        f"Full: width {FULL.width}, {FULL.subset} MNIST-1D training signals, "
        f"{FULL.steps} steps, {FULL.folds}-fold CV. Quick: width "
        f"{QUICK.width}, {QUICK.steps} steps, "
        f"{QUICK.folds} folds."
    ),
)

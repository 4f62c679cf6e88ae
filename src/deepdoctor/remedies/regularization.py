"""Regularisation remedies: dropout, weight_decay, early_stopping."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..experiment import Experiment
from ..stats import activation_kind
from .base import Context, Prescription, Remedy, record_change, set_submodule, transform_model
from .optimization import base_factory

DROPOUT_P = 0.2  # a mild rate: enough to regularise small MLPs/CNNs without starving them
WEIGHT_DECAY = 5e-4  # the customary L2 strength for SGD on small image sets
EARLY_STOPPING_PATIENCE = 3  # evaluations without a better validation loss


def add_dropout(model: nn.Module, p: float = DROPOUT_P) -> nn.Module:
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
        raise Prescription("dropout", "the model already uses dropout; tune its rate by hand")
    # The last activation feeds the classifier; dropping there too is standard.
    targets = [n for n, m in model.named_modules() if n and activation_kind(m) is not None]
    if not targets:
        raise Prescription(
            "dropout",
            "no activation modules to put dropout after; add "
            f"nn.Dropout({p}) after your hidden activations by hand",
        )
    for name in targets:
        set_submodule(model, name, nn.Sequential(model.get_submodule(name), nn.Dropout(p)))
    return model


def _dropout(exp: Experiment, ctx: Context) -> Experiment:
    return transform_model(
        exp, "dropout", f"# add nn.Dropout({DROPOUT_P}) after each hidden activation", add_dropout
    )


class WithWeightDecay:
    """An optimizer factory with weight decay set on every group (a class, so it pickles)."""

    def __init__(self, factory: Callable[..., torch.optim.Optimizer], decay: float) -> None:
        self.factory = factory
        self.decay = decay

    def __call__(self, params: object) -> torch.optim.Optimizer:
        opt = self.factory(params)
        for group in opt.param_groups:
            group["weight_decay"] = self.decay
        return opt


def _weight_decay(exp: Experiment, ctx: Context) -> Experiment:
    return record_change(
        exp,
        "weight_decay",
        f"# pass weight_decay={WEIGHT_DECAY} to the optimizer",
        optimizer=WithWeightDecay(base_factory(exp), WEIGHT_DECAY),
    )


def _early_stopping(exp: Experiment, ctx: Context) -> Experiment:
    if exp.val is None:
        raise Prescription("early_stopping", "needs validation data to watch; pass val=")
    return record_change(
        exp,
        "early_stopping",
        f"# stop after {EARLY_STOPPING_PATIENCE} evaluations without a better val loss; "
        "keep the best weights",
        early_stopping=EARLY_STOPPING_PATIENCE,
        eval_every=max(1, exp.steps // 20),
    )


REMEDIES = [
    Remedy("dropout", "regularization", f"dropout {DROPOUT_P} after each activation", _dropout),
    Remedy("weight_decay", "regularization", f"L2 weight decay {WEIGHT_DECAY}", _weight_decay),
    Remedy(
        "early_stopping",
        "regularization",
        "stop when validation loss stops improving; keep the best weights",
        _early_stopping,
    ),
]

"""Remedies: each a named transformation of an Experiment (see base.py).

``REMEDIES`` maps every remedy name of the public contract to its implementation;
``apply_remedies(exp, names, ctx)`` applies several in the order that composes
(capacity before structure, structure before initialisation, training settings last).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..experiment import Experiment
from ..findings import REMEDIES as REMEDY_NAMES
from . import (
    activation,
    capacity,
    data,
    init,
    normalization,
    optimization,
    regularization,
    residual,
    transfer,
)
from .base import Context, Prescription, Remedy

REMEDIES: dict[str, Remedy] = {
    r.name: r
    for module in (
        capacity,
        activation,
        normalization,
        residual,
        init,
        data,
        optimization,
        regularization,
        transfer,
    )
    for r in module.REMEDIES
}
assert set(REMEDIES) == set(REMEDY_NAMES), set(REMEDY_NAMES) ^ set(REMEDIES)

# Composition order: resize first (it rebuilds from the spec), then change structure, then
# re-initialise the final structure, then data and training settings.
ORDER = [
    "more_capacity",
    "less_capacity",
    "relu_activation",
    "leaky_relu_activation",
    "batch_norm",
    "layer_norm",
    "residual",
    "he_init",
    "xavier_init",
    "orthogonal_init",
    "freeze_pretrained",
    "standardize_inputs",
    "class_weights",
    "data_augmentation",
    "adam",
    "lower_lr",
    "raise_lr",
    "lr_warmup",
    "discriminative_lr",  # after every rate change: it splits the final rate into groups
    "gradient_clipping",
    "weight_decay",
    "dropout",
    "early_stopping",
    "train_longer",
]
assert set(ORDER) == set(REMEDIES)

# Pairs that undo or contradict each other; never combined.
CONFLICTS = [
    {"he_init", "xavier_init"},
    {"he_init", "orthogonal_init"},
    {"xavier_init", "orthogonal_init"},
    {"relu_activation", "leaky_relu_activation"},
    {"batch_norm", "layer_norm"},
    {"lower_lr", "raise_lr"},
    {"more_capacity", "less_capacity"},
    {"discriminative_lr", "freeze_pretrained"},  # a frozen part has no rate to lower
]


def compatible(names: Iterable[str]) -> bool:
    chosen = set(names)
    return not any(pair <= chosen for pair in CONFLICTS)


def apply_remedies(exp: Experiment, names: Iterable[str], ctx: Context) -> Experiment:
    names = list(names)
    unknown = [n for n in names if n not in REMEDIES]
    if unknown:
        raise ValueError(f"unknown remedies {unknown}; available: {', '.join(REMEDIES)}")
    for name in sorted(names, key=ORDER.index):
        exp = REMEDIES[name].apply(exp, ctx)
    return exp


__all__ = [
    "CONFLICTS",
    "Context",
    "ORDER",
    "Prescription",
    "REMEDIES",
    "Remedy",
    "apply_remedies",
    "compatible",
]

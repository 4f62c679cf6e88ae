"""Normalisation remedies: batch_norm, layer_norm.

A norm layer goes between each Linear / Conv and the activation that follows it (found by
running one forward pass), by replacing the weight layer with ``Sequential(layer, norm)``.
"""

from __future__ import annotations

from torch import nn

from ..experiment import Experiment
from ..stats import activation_kind
from .base import (
    NORM_LAYERS,
    WEIGHT_LAYERS,
    Context,
    Prescription,
    Remedy,
    forward_calls,
    set_submodule,
    transform_model,
)


def _norm_for(kind: str, layer: nn.Module, out_shape: tuple[int, ...]) -> nn.Module | None:
    channels = out_shape[1] if len(out_shape) > 1 else 0
    if isinstance(layer, nn.Linear):
        if kind == "layer":
            return nn.LayerNorm(layer.out_features)
        return nn.BatchNorm1d(layer.out_features) if len(out_shape) == 2 else None
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    return {3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[len(out_shape)](channels)


def insert_norms(model: nn.Module, example: object, kind: str, remedy: str) -> nn.Module:
    calls = forward_calls(model, example)  # type: ignore[arg-type]
    targets: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    last_weight: tuple[str, nn.Module, tuple[int, ...]] | None = None
    for name, module, _, out_shape in calls:
        if isinstance(module, WEIGHT_LAYERS):
            last_weight = (name, module, out_shape)
        elif isinstance(module, NORM_LAYERS):
            last_weight = None  # already normalised
        elif last_weight is not None and activation_kind(module) is not None:
            targets.append(last_weight)
            last_weight = None
    inserted = 0
    for name, layer, out_shape in targets:
        norm = _norm_for(kind, layer, out_shape)
        if norm is not None:
            set_submodule(model, name, nn.Sequential(layer, norm))
            inserted += 1
    if not inserted:
        raise Prescription(
            remedy,
            f"found no Linear/Conv layer followed by an activation module to put "
            f"{kind} norm after; add it between your weight layers and activations by hand",
        )
    return model


def _norm_remedy(name: str, kind: str, cls: str) -> Remedy:
    def apply(exp: Experiment, ctx: Context) -> Experiment:
        return transform_model(
            exp,
            name,
            f"# insert nn.{cls}(features) after each hidden Linear/Conv layer",
            insert_norms,
            example=ctx.example,
            kind=kind,
            remedy=name,
        )

    return Remedy(
        name,
        "normalization",
        f"insert {cls} between each hidden weight layer and its activation",
        apply,
    )


REMEDIES = [
    _norm_remedy("batch_norm", "batch", "BatchNorm1d / BatchNorm2d"),
    _norm_remedy("layer_norm", "layer", "LayerNorm / GroupNorm(1, C)"),
]

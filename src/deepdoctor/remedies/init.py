"""Initialisation remedies: he_init, xavier_init, orthogonal_init."""

from __future__ import annotations

from torch import nn

from ..experiment import Experiment
from ..models import init_weights
from ..stats import activation_kind
from .base import Context, Prescription, Remedy, transform_model


def dominant_activation(model: nn.Module) -> str:
    """The most common activation module of the model (its gain sets orthogonal init)."""
    kinds = [k for m in model.modules() if (k := activation_kind(m)) is not None]
    return max(set(kinds), key=kinds.count) if kinds else "relu"


def reinit(model: nn.Module, init: str, remedy: str) -> nn.Module:
    """Re-initialise the model's weight layers with ``init`` (its dominant activation's gain)."""
    layers = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.RNNBase)
    if not any(isinstance(m, layers) for m in model.modules()):
        raise Prescription(
            remedy,
            "no Linear, Conv or recurrent layer to re-initialise; "
            f"initialise your weight tensors with {init} by hand",
        )
    return init_weights(model, init, dominant_activation(model))


def _reinit(name: str, init: str) -> Remedy:
    def apply(exp: Experiment, ctx: Context) -> Experiment:
        code = f"deepdoctor.models.init_weights(model, {init!r})  # after building the model"
        return transform_model(exp, name, code, reinit, init=init, remedy=name)

    return Remedy(
        name, "init", f"re-initialise Linear/Conv/recurrent weights ({init}), biases to zero", apply
    )


REMEDIES = [
    _reinit("he_init", "he"),
    _reinit("xavier_init", "xavier"),
    _reinit("orthogonal_init", "orthogonal"),
]

"""Activation remedies: relu_activation, leaky_relu_activation.

Activation modules are swapped in place. A model that applies sigmoid / tanh functionally
is rewritten with torch.fx when it can be traced; otherwise the remedy is a prescription.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..experiment import Experiment
from ..stats import activation_kind
from .base import Context, Prescription, Remedy, set_submodule, transform_model

# Activations worth replacing: those that saturate or whose gradient fades for large inputs.
REPLACEABLE = {
    "sigmoid",
    "tanh",
    "hardtanh",
    "hardsigmoid",
    "softplus",
    "elu",
    "selu",
    "celu",
    "gelu",
    "silu",
    "mish",
    "relu6",
    "relu",
    "leaky_relu",
    "prelu",
}
FUNCTIONAL = {
    torch.sigmoid,
    torch.tanh,
    F.sigmoid,
    F.tanh,
    F.gelu,
    F.silu,
    F.elu,
    F.selu,
    F.relu,
    torch.relu,
}


def swap_activations(
    model: nn.Module, kind: str, factory: Callable[[], nn.Module], remedy: str
) -> nn.Module:
    swapped = 0
    for name, module in list(model.named_modules()):
        k = activation_kind(module)
        if name and k is not None and k != kind and k in REPLACEABLE:
            set_submodule(model, name, factory())
            swapped += 1
    if swapped:
        return model
    if any(activation_kind(m) == kind for m in model.modules()):
        raise Prescription(remedy, f"every activation module is already {kind}")
    try:
        graph = fx.symbolic_trace(model)
    except Exception as exc:  # fx cannot trace data-dependent control flow
        raise Prescription(
            remedy,
            f"no activation modules found and the model cannot be traced by torch.fx "
            f"({type(exc).__name__}); replace sigmoid/tanh calls in forward() by {kind}",
        ) from exc
    target = F.relu if kind == "relu" else F.leaky_relu
    for node in graph.graph.nodes:
        if node.op == "call_function" and node.target in FUNCTIONAL:
            node.target = target
            swapped += 1
    if not swapped:
        raise Prescription(
            remedy,
            "found no activation to replace (modules or functional "
            f"calls); apply {kind} in your model's forward by hand",
        )
    graph.recompile()
    return graph


def _swap(name: str, kind: str, factory: Callable[[], nn.Module], code: str) -> Remedy:
    def apply(exp: Experiment, ctx: Context) -> Experiment:
        return transform_model(
            exp, name, code, swap_activations, kind=kind, factory=factory, remedy=name
        )

    return Remedy(name, "activation", f"replace saturating activations by {kind}", apply)


REMEDIES = [
    _swap(
        "relu_activation",
        "relu",
        nn.ReLU,
        "# replace nn.Sigmoid()/nn.Tanh() by nn.ReLU() in the model definition",
    ),
    _swap(
        "leaky_relu_activation",
        "leaky_relu",
        functools.partial(nn.LeakyReLU, 0.01),
        "# replace the activations by nn.LeakyReLU(0.01) in the model definition",
    ),
]

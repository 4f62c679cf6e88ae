"""Resize the hidden layers of any model that ``torch.fx`` can trace: more_capacity and
less_capacity beyond ``deepdoctor.models``.

A hidden width can change safely where one weight layer's output reaches exactly one other
weight layer through elementwise steps only (activations, dropout, batch / layer norm, which
are resized with it): ``Linear(a, h) -> ReLU -> Linear(h, b)`` becomes ``Linear(a, 2h) ->
ReLU -> Linear(2h, b)``. Anything else that reads the hidden units (a residual sum, a
reshape, a second consumer) pins the width, and that pair is left alone. The tracing is
for analysis only: the layers are replaced in the user's own module, whose class and forward
stay as they are.

New weights are drawn like the old ones, so the user's initialisation keeps its scale: a
normal with each old weight's standard deviation, the consuming layer's divided by the
square root of the width factor (its fan-in grew by it), biases copied or zero.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..stats import activation_kind
from .base import set_submodule

RESIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
PASS_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm)
# Elementwise functions a hidden layer's output may pass through unchanged in shape.
PASS_FUNCTIONS = {
    F.relu,
    F.leaky_relu,
    F.gelu,
    F.elu,
    F.silu,
    F.dropout,
    F.sigmoid,
    F.tanh,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    operator.neg,
}
PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous"}


class NotTraceable(Exception):
    """torch.fx could not trace the model (data-dependent control flow, for example)."""


@dataclass(frozen=True)
class HiddenPair:
    """A producer whose output units reach exactly one consumer, with the norms between."""

    producer: str
    consumer: str
    norms: tuple[str, ...]
    width: int


def hidden_pairs(model: nn.Module) -> list[HiddenPair]:
    """The (producer, consumer) weight-layer pairs whose shared width can change."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # fx raises many types for code it cannot follow
        raise NotTraceable(f"{type(exc).__name__}: {exc}") from exc
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules.get(node.target), RESIZABLE):
            pair = _follow(node, modules)
            if pair is not None:
                pairs.append(pair)
    return pairs


def _follow(start: torch.fx.Node, modules: dict[str, nn.Module]) -> HiddenPair | None:
    """Walk from a weight layer through elementwise steps to the one weight layer that reads
    its units; None when anything else reads them."""
    producer = modules[str(start.target)]
    if getattr(producer, "groups", 1) != 1:
        return None  # grouped / depthwise convolutions tie channels to groups
    node, norms = start, list[str]()
    while True:
        if len(node.users) != 1:
            return None
        (node,) = node.users
        if node.op == "call_module":
            module = modules.get(str(node.target))
            if isinstance(module, RESIZABLE):
                ok = (
                    _in_size(module) == _out_size(producer)
                    and type(module) is type(producer)
                    and getattr(module, "groups", 1) == 1
                )
                if not ok:
                    return None
                return HiddenPair(
                    str(start.target), str(node.target), tuple(norms), _out_size(producer)
                )
            if isinstance(module, NORMS):
                if _norm_size(module) != _out_size(producer):
                    return None  # normalises over more than the hidden units
                norms.append(str(node.target))
                continue
            if module is not None and (
                isinstance(module, PASS_MODULES) or activation_kind(module) is not None
            ):
                continue
            return None
        if node.op == "call_function" and node.target in PASS_FUNCTIONS:
            continue
        if node.op == "call_method" and node.target in PASS_METHODS:
            continue
        return None


def _norm_size(m: nn.Module) -> int | None:
    if isinstance(m, nn.LayerNorm):
        shape = tuple(m.normalized_shape)
        return shape[0] if len(shape) == 1 else None
    return m.num_features  # type: ignore[return-value]


def _out_size(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels  # type: ignore[return-value]


def _in_size(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else m.in_channels  # type: ignore[return-value]


def resize_hidden(
    model: nn.Module, factor: float, min_width: int = 4
) -> list[tuple[str, int, int]]:
    """Multiply every resizable hidden width by ``factor`` in place; returns (producer, old
    width, new width) for each pair changed. A layer that feeds one pair and consumes
    another (a chain) is resized on both sides."""
    pairs = hidden_pairs(model)
    new_out = {p.producer: max(min_width, round(p.width * factor)) for p in pairs}
    new_in = {p.consumer: new_out[p.producer] for p in pairs}
    norm_size = {n: new_out[p.producer] for p in pairs for n in p.norms}
    for name in set(new_out) | set(new_in):
        old = model.get_submodule(name)
        out_size = new_out.get(name, _out_size(old))
        in_size = new_in.get(name, _in_size(old))
        fan_in_growth = in_size / _in_size(old)
        set_submodule(model, name, _resized(old, in_size, out_size, fan_in_growth))
    for name, size in norm_size.items():
        set_submodule(model, name, _resized_norm(model.get_submodule(name), size))
    return [
        (p.producer, p.width, new_out[p.producer]) for p in pairs if new_out[p.producer] != p.width
    ]


@torch.no_grad()
def _resized(old: Any, in_size: int, out_size: int, fan_in_growth: float) -> nn.Module:
    """A fresh layer of the new sizes, drawn at the old weights' scale (see the module)."""
    has_bias = old.bias is not None
    new: Any
    if isinstance(old, nn.Linear):
        new = nn.Linear(in_size, out_size, bias=has_bias)
    else:
        new = type(old)(
            in_size,
            out_size,
            old.kernel_size,
            stride=old.stride,
            padding=old.padding,
            dilation=old.dilation,
            bias=has_bias,
            padding_mode=old.padding_mode,
        )
    std = float(old.weight.std()) if old.weight.numel() > 1 else 0.0
    new.weight.normal_(0.0, std / math.sqrt(fan_in_growth))
    if has_bias:
        if old.bias.numel() == out_size:
            new.bias.copy_(old.bias)
        else:
            new.bias.fill_(float(old.bias.mean()))
    return new.to(old.weight.device, old.weight.dtype)


def _resized_norm(old: nn.Module, size: int) -> nn.Module:
    if isinstance(old, nn.LayerNorm):
        return nn.LayerNorm(size, eps=old.eps, elementwise_affine=old.elementwise_affine)
    assert isinstance(old, nn.modules.batchnorm._BatchNorm)
    return type(old)(size, eps=old.eps, momentum=old.momentum, affine=old.affine)

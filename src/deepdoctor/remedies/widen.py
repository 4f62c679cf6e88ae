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
from .base import forward_calls, set_submodule

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
    new_out = {p.producer: _moved(p.width, factor, min_width) for p in pairs}
    new_in = {p.consumer: new_out[p.producer] for p in pairs}
    norm_size = {n: new_out[p.producer] for p in pairs for n in p.norms}
    # In the model's own order: each new layer draws its weights from the generator, so an
    # order that varied (a set of names follows the process's string hashing) would give
    # another model in every process.
    resized = set(new_out) | set(new_in)
    for name in [n for n, _ in model.named_modules() if n in resized]:
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


def _moved(width: int, factor: float, least: int) -> int:
    """``width`` times ``factor``, at least ``least``; unchanged when that would move it the
    other way (a width of 2 is not "halved" to 4)."""
    new = max(least, round(width * factor))
    return new if (new > width) == (factor > 1) else width


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


# -- beyond fx pairs: recurrent layers, and a model with no hidden layer ----------------------

RECURRENT = (nn.RNN, nn.LSTM, nn.GRU)
# The hidden layer a model with none gets: deepdoctor.models.mlp's default width.
HIDDEN_WIDTH = 64


def resize_recurrent(
    model: nn.Module, example: torch.Tensor, factor: float, min_width: int = 4
) -> list[tuple[str, int, int]]:
    """Resize, in place, each RNN / LSTM / GRU whose units the next weight layer called after
    it reads (a Linear of ``in_features`` its hidden size times its directions: the usual
    recurrent classifier's head), together with that layer. No tracing is needed (their
    forward often branches on the input's shape, which fx cannot follow): the call order comes
    from one forward pass, and a second pass after the change must run, else nothing changes
    (the caller then prescribes)."""
    calls = [(name, m) for name, m, _, _ in forward_calls(model, example)]
    changed: list[tuple[str, str, int, int]] = []
    for i, (name, module) in enumerate(calls):
        if not isinstance(module, RECURRENT) or module.proj_size:
            continue
        dirs = 2 if module.bidirectional else 1
        after = [(n, m) for n, m in calls[i + 1 :] if isinstance(m, RESIZABLE)]
        if not after or not isinstance(after[0][1], nn.Linear):
            continue
        head_name, head = after[0]
        if head.in_features != module.hidden_size * dirs:
            continue
        width = _moved(module.hidden_size, factor, min_width)
        if width != module.hidden_size:
            changed.append((name, head_name, module.hidden_size, width))
    originals = {n: model.get_submodule(n) for c in changed for n in c[:2]}
    for name, head_name, old_width, width in changed:
        old: Any = model.get_submodule(name)
        set_submodule(model, name, _recurrent(old, width))
        reader: Any = model.get_submodule(head_name)
        dirs = 2 if old.bidirectional else 1
        growth = width / old_width
        new = _resized(reader, width * dirs, reader.out_features, growth)
        set_submodule(model, head_name, new)
    try:
        forward_calls(model, example)
    except Exception:  # the head did not read the recurrent units alone: undo
        for n, m in originals.items():
            set_submodule(model, n, m)
        return []
    return [(name, old, new) for name, _, old, new in changed]


def _recurrent(old: Any, width: int) -> nn.Module:
    kwargs: dict[str, Any] = {
        "num_layers": old.num_layers,
        "bias": old.bias,
        "batch_first": old.batch_first,
        "dropout": old.dropout,
        "bidirectional": old.bidirectional,
    }
    if isinstance(old, nn.RNN):
        kwargs["nonlinearity"] = old.nonlinearity
    new = type(old)(old.input_size, width, **kwargs)
    return new.to(old.weight_ih_l0.device, old.weight_ih_l0.dtype)


def add_hidden_layer(model: nn.Module, width: int = HIDDEN_WIDTH) -> nn.Module | None:
    """A model whose only weight layer is one Linear (a linear or logistic model), with that
    layer replaced by Linear -> ReLU -> Linear through ``width`` hidden units; None for any
    other model. The new layers take torch's default initialisation."""
    weights = [(n, m) for n, m in model.named_modules() if isinstance(m, RESIZABLE)]
    if len(weights) != 1 or not isinstance(weights[0][1], nn.Linear):
        return None
    name, old = weights[0][0], weights[0][1]
    assert isinstance(old, nn.Linear)  # checked above
    new = nn.Sequential(
        nn.Linear(old.in_features, width, bias=old.bias is not None),
        nn.ReLU(),
        nn.Linear(width, old.out_features, bias=old.bias is not None),
    ).to(old.weight.device, old.weight.dtype)
    if not name:
        return new
    set_submodule(model, name, new)
    return model

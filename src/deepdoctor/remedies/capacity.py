"""Capacity remedies: more_capacity, less_capacity.

A model built from a ``deepdoctor.models.spec(...)`` is rebuilt with its ``width`` doubled or
halved; any other model that ``torch.fx`` can trace has its hidden widths resized in place
(``widen``: only where one weight layer's units reach exactly one other). Where that finds
nothing: an RNN / LSTM / GRU read by a Linear head is resized with its head (their forward
usually branches on the input's shape, which fx cannot trace), and for more_capacity a
model whose only weight layer is one Linear gets a hidden ReLU layer (a linear model has no
width to grow). Growing takes a width to at least ``MIN_GROWN_WIDTH``. Anything else gets a
prescription with the code to write.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ..experiment import Experiment
from ..models import BUILDERS, BuilderSpec
from .base import Context, Prescription, Remedy, record_change, transform_model
from .widen import HIDDEN_WIDTH, NotTraceable, add_hidden_layer, resize_hidden, resize_recurrent

WIDTH_FACTOR = 2  # double or halve: a step big enough to show in one verified run
MIN_WIDTH = 4
# Grown at least to this: a GRU of 2 units doubled to 4 still underfits the 8-class teacher
# task (43% in 200 steps, where 8 units reach 50% and 16 units 53%).
MIN_GROWN_WIDTH = 16


def _resize(name: str, grow: bool) -> Remedy:
    def apply(exp: Experiment, ctx: Context) -> Experiment:
        spec = exp.model
        if not isinstance(spec, BuilderSpec) or "width" not in _widths(spec):
            return _resize_traced(exp, ctx, name, grow)
        width = int(str(spec.kwargs.get("width", _widths(spec)["width"])))
        new = (
            max(MIN_GROWN_WIDTH, width * WIDTH_FACTOR)
            if grow
            else max(MIN_WIDTH, width // WIDTH_FACTOR)
        )
        if new == width:
            raise Prescription(name, f"width {width} cannot shrink further")
        return record_change(
            exp, name, f"width = {new}  # was {width}", model=spec.replace(width=new)
        )

    return Remedy(name, "capacity", f"{'double' if grow else 'halve'} the hidden width", apply)


def _resize_traced(exp: Experiment, ctx: Context, name: str, grow: bool) -> Experiment:
    factor = WIDTH_FACTOR if grow else 1 / WIDTH_FACTOR
    verb = "double" if grow else "halve"
    least = MIN_GROWN_WIDTH if grow else MIN_WIDTH
    try:
        changed = resize_anywhere(exp.build(), ctx.example, factor, least)[1]
    except NotTraceable as exc:
        raise Prescription(
            name,
            f"torch.fx could not trace the model ({exc}), so its widths cannot be changed "
            f"automatically; {verb} each hidden width by hand, e.g. for a pair fc1 -> act -> "
            f"fc2: model.fc1 = nn.Linear(fc1.in_features, {'2 * ' if grow else ''}h"
            f"{'' if grow else ' // 2'}); model.fc2 = nn.Linear(that width, fc2.out_features)",
        ) from exc
    if not changed:
        raise Prescription(
            name,
            f"no hidden width can be {'doubled' if grow else 'halved'} automatically (every "
            "weight layer's output is read by more than one layer, reshaped, or summed with "
            "another); change the widths in the model's constructor",
        )
    what = "; ".join(changed)
    code = (
        f"# {what}"
        if changed[0].startswith("a hidden layer")
        else f"# {verb} the hidden widths: {what}"
    )
    return transform_model(
        exp, name, code, resized_anywhere, example=ctx.example, factor=factor, least=least
    )


def resize_anywhere(
    model: nn.Module, example: torch.Tensor, factor: float, least: int
) -> tuple[nn.Module, list[str]]:
    """The resized model and what changed, in words (the module doc says in which order the
    ways are tried); raises NotTraceable when fx cannot trace it and nothing else applies."""
    untraceable: NotTraceable | None = None
    try:
        pairs = resize_hidden(model, factor, least)
    except NotTraceable as exc:
        untraceable = exc
        # recurrent layers first: their heads' input width changes before the heads' pairs
        pairs = resize_recurrent(model, example, factor, least)
        pairs += _resize_parts(model, factor, least)
    if not pairs:
        pairs = resize_recurrent(model, example, factor, least)
    if pairs:
        return model, [f"{layer}: {old} -> {new} units" for layer, old, new in pairs]
    deeper = add_hidden_layer(model) if factor > 1 else None
    if deeper is not None:
        return deeper, [f"a hidden layer of {HIDDEN_WIDTH} ReLU units (the model had none)"]
    if untraceable is not None:
        raise untraceable
    return model, []


def _resize_parts(model: nn.Module, factor: float, least: int, prefix: str = "") -> list:
    """``resize_hidden`` on each submodule that traces, where the whole model does not: a
    pair inside a submodule is read by nothing outside it (its output is not a pair's)."""
    pairs: list[tuple[str, int, int]] = []
    for name, child in model.named_children():
        try:
            pairs += [
                (f"{prefix}{name}.{p}", a, b) for p, a, b in resize_hidden(child, factor, least)
            ]
        except NotTraceable:
            pairs += _resize_parts(child, factor, least, f"{prefix}{name}.")
    return pairs


def resized_anywhere(
    model: nn.Module, example: torch.Tensor, factor: float, least: int
) -> nn.Module:
    """``resize_anywhere``'s model: the transform each fresh build of the treated experiment
    gets (module-level, so a treated experiment pickles and changes.py can call it)."""
    return resize_anywhere(model, example, factor, least)[0]


def _widths(spec: BuilderSpec) -> dict[str, object]:
    params = inspect.signature(BUILDERS[spec.name]).parameters
    return {k: p.default for k, p in params.items() if k == "width"}


REMEDIES = [_resize("more_capacity", grow=True), _resize("less_capacity", grow=False)]

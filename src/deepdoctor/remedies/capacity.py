"""Capacity remedies: more_capacity, less_capacity.

A model built from a ``deepdoctor.models.spec(...)`` is rebuilt with its ``width`` doubled or
halved; any other model that ``torch.fx`` can trace has its hidden widths resized in place
(``widen``: only where one weight layer's units reach exactly one other). A model fx cannot
trace, or one with no resizable hidden width, gets a prescription with the code to write.
"""

from __future__ import annotations

import inspect

from torch import nn

from ..experiment import Experiment
from ..models import BUILDERS, BuilderSpec
from .base import Context, Prescription, Remedy, record_change, transform_model
from .widen import NotTraceable, resize_hidden

WIDTH_FACTOR = 2  # double or halve: a step big enough to show in one verified run
MIN_WIDTH = 4


def _resize(name: str, grow: bool) -> Remedy:
    def apply(exp: Experiment, ctx: Context) -> Experiment:
        spec = exp.model
        if not isinstance(spec, BuilderSpec) or "width" not in _widths(spec):
            return _resize_traced(exp, name, grow)
        width = int(str(spec.kwargs.get("width", _widths(spec)["width"])))
        new = width * WIDTH_FACTOR if grow else max(MIN_WIDTH, width // WIDTH_FACTOR)
        if new == width:
            raise Prescription(name, f"width {width} cannot shrink further")
        return record_change(
            exp, name, f"width = {new}  # was {width}", model=spec.replace(width=new)
        )

    return Remedy(name, "capacity", f"{'double' if grow else 'halve'} the hidden width", apply)


def _resize_traced(exp: Experiment, name: str, grow: bool) -> Experiment:
    factor = WIDTH_FACTOR if grow else 1 / WIDTH_FACTOR
    verb = "double" if grow else "halve"
    try:
        changed = resize_hidden(exp.build(), factor, MIN_WIDTH)
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
    code = "; ".join(f"{layer}: {old} -> {new} units" for layer, old, new in changed)

    def resized(model: nn.Module) -> nn.Module:
        resize_hidden(model, factor, MIN_WIDTH)
        return model

    return transform_model(exp, name, f"# {verb} the hidden widths: {code}", resized)


def _widths(spec: BuilderSpec) -> dict[str, object]:
    params = inspect.signature(BUILDERS[spec.name]).parameters
    return {k: p.default for k, p in params.items() if k == "width"}


REMEDIES = [_resize("more_capacity", grow=True), _resize("less_capacity", grow=False)]

"""Capacity remedies: more_capacity, less_capacity.

Only models built from a ``deepdoctor.models.spec(...)`` can be resized automatically; for
others the remedy is a prescription saying what to widen or narrow.
"""

from __future__ import annotations

import inspect

from ..experiment import Experiment
from ..models import BUILDERS, BuilderSpec
from .base import Context, Prescription, Remedy, record_change

WIDTH_FACTOR = 2  # double or halve: a step big enough to show in one verified run
MIN_WIDTH = 4


def _resize(name: str, grow: bool) -> Remedy:
    def apply(exp: Experiment, ctx: Context) -> Experiment:
        spec = exp.model
        if not isinstance(spec, BuilderSpec) or "width" not in _widths(spec):
            raise Prescription(
                name,
                f"{'double' if grow else 'halve'} the width of the hidden layers "
                "(the model was not built from deepdoctor.models.spec, so it cannot be "
                "resized automatically)",
            )
        width = int(str(spec.kwargs.get("width", _widths(spec)["width"])))
        new = width * WIDTH_FACTOR if grow else max(MIN_WIDTH, width // WIDTH_FACTOR)
        if new == width:
            raise Prescription(name, f"width {width} cannot shrink further")
        return record_change(
            exp, name, f"width = {new}  # was {width}", model=spec.replace(width=new)
        )

    return Remedy(name, "capacity", f"{'double' if grow else 'halve'} the hidden width", apply)


def _widths(spec: BuilderSpec) -> dict[str, object]:
    params = inspect.signature(BUILDERS[spec.name]).parameters
    return {k: p.default for k, p in params.items() if k == "width"}


REMEDIES = [_resize("more_capacity", grow=True), _resize("less_capacity", grow=False)]

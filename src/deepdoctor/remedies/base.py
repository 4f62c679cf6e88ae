"""What a remedy is: a named transformation of an Experiment, or a prescription.

A remedy never edits the Experiment it is given: it returns a new one whose model builder,
optimizer factory, data or training settings differ. Architecture changes wrap the builder,
so every candidate is still built fresh from the same seed. When a model cannot be changed
automatically (e.g. its activations are applied functionally and it cannot be traced), the
remedy raises ``Prescription`` with what a person should change, and where; treat records it
instead of skipping it silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..experiment import Experiment


class Prescription(Exception):
    """A remedy that must be applied by hand: ``instructions`` says what to change."""

    def __init__(self, remedy: str, instructions: str) -> None:
        super().__init__(f"{remedy}: {instructions}")
        self.remedy = remedy
        self.instructions = instructions


@dataclass
class Context:
    """What the remedies may read about the untreated run to choose their settings."""

    example: torch.Tensor  # a few training inputs, to trace shapes and forward order
    base_lr: float = 0.1
    grad_norms: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per step, unclipped
    update_ratio: float = float("nan")  # median update-to-weight ratio of the baseline
    kinds: set[str] = field(default_factory=set)  # finding kinds of the untreated run
    class_counts: list[int] | None = None


@dataclass(frozen=True)
class Remedy:
    name: str
    family: str
    description: str
    apply: Callable[[Experiment, Context], Experiment]
    # At most how many optimizer steps applying the remedy spends (a range test), so a search
    # can check its budget before applying it; most remedies spend none.
    cost: Callable[[Experiment], int] = lambda exp: 0


def record_change(exp: Experiment, remedy: str, code: str, **changes: Any) -> Experiment:
    """A copy of ``exp`` with ``changes`` and one more line in its changes log.

    ``code`` is the line of Python a user would write to make the same change by hand; the
    CLI gathers these into the snippet it saves next to the treated model.
    """
    log = list(exp.meta.get("changes", [])) + [{"remedy": remedy, "code": code}]
    return exp.replace(meta={**exp.meta, "changes": log}, **changes)


def transform_model(
    exp: Experiment, remedy: str, code: str, fn: Callable[[nn.Module], nn.Module]
) -> Experiment:
    """Wrap the builder so every fresh model gets ``fn`` applied; fail now if ``fn`` cannot."""
    fn(exp.build())  # surfaces a Prescription (or a bug) before any training is spent
    old = exp.model

    def build() -> nn.Module:
        return fn(old())

    return record_change(exp, remedy, code, model=build)


def set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, child, new)


def forward_calls(
    model: nn.Module, example: torch.Tensor
) -> list[tuple[str, nn.Module, tuple[int, ...], tuple[int, ...]]]:
    """Every leaf module called by one forward pass, in order, with input and output shapes."""
    calls: list[tuple[str, nn.Module, tuple[int, ...], tuple[int, ...]]] = []
    handles = []
    for name, module in model.named_modules():
        if name and not list(module.children()) or isinstance(module, nn.MultiheadAttention):

            def hook(m: nn.Module, args: Any, out: Any, name: str = name) -> None:
                x = args[0] if args and isinstance(args[0], torch.Tensor) else None
                o = out[0] if isinstance(out, tuple | list) else out
                calls.append(
                    (
                        name,
                        m,
                        tuple(x.shape) if x is not None else (),
                        tuple(o.shape) if isinstance(o, torch.Tensor) else (),
                    )
                )

            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return calls


# The weight layers (stats.is_weight_layer) that a norm layer can follow and a residual block
# can end with: the ones whose output has a known feature or channel count.
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)

"""What a remedy is: a named transformation of an Experiment, or a prescription.

A remedy never edits the Experiment it is given: it returns a new one whose model builder,
optimizer factory, data or training settings differ. Architecture changes wrap the builder,
so every candidate is still built fresh from the same seed. When a model cannot be changed
automatically (e.g. its activations are applied functionally and it cannot be traced), the
remedy raises ``Prescription`` with what a person should change, and where; treat records it
instead of skipping it silently.
"""

from __future__ import annotations

import functools
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
    # lower_lr: how many times its rate is cut tenfold further (treat cuts it again when the
    # screen at its rate still blew up)
    lr_cuts: int = 0


@dataclass(frozen=True)
class Remedy:
    name: str
    family: str
    description: str
    apply: Callable[[Experiment, Context], Experiment]
    # At most how many optimizer steps applying the remedy spends (a range test), so a search
    # can check its budget before applying it; most remedies spend none.
    cost: Callable[[Experiment], int] = lambda exp: 0


def record_change(
    exp: Experiment,
    remedy: str,
    code: str,
    *,
    record: dict[str, Any] | None = None,
    **changes: Any,
) -> Experiment:
    """A copy of ``exp`` with ``changes`` and one more entry in its changes log.

    ``code`` is the line of Python a user would write to make the same change by hand; the
    CLI gathers these into the snippet it saves next to the treated model. ``record`` adds
    what the written ``changes.py`` needs (standardize_inputs: the ``inputs`` mean and std).
    """
    log = list(exp.meta.get("changes", [])) + [{"remedy": remedy, "code": code, **(record or {})}]
    return exp.replace(meta={**exp.meta, "changes": log}, **changes)


class ModelTransform:
    """One remedy's change to a built model, ``fn(model, **kwargs)`` with ``fn`` a
    module-level function: so a treated experiment pickles (trials run in other processes)
    and the change can be written out as a line of Python (``changes.py``)."""

    def __init__(self, fn: Callable[..., nn.Module], **kwargs: Any) -> None:
        self.fn = fn
        self.kwargs = kwargs

    def __call__(self, model: nn.Module) -> nn.Module:
        return self.fn(model, **self.kwargs)

    def code(self, imports: set[str]) -> str:
        """``model = module.fn(model, key=value, ...)``, adding the modules it names to
        ``imports``; a tensor argument (an example batch, read only for its shapes) is
        written as zeros of its shape and dtype."""
        args = "".join(f", {k}={python_literal(v, imports)}" for k, v in self.kwargs.items())
        return f"model = {python_literal(self.fn, imports)}(model{args})"


class TransformedBuilder:
    """A builder whose fresh models get one more ``ModelTransform``: picklable, unlike a
    closure, and readable back as the chain of changes (``transforms``)."""

    def __init__(self, base: Callable[[], nn.Module], transform: ModelTransform) -> None:
        self.base = base
        self.transform = transform

    def __call__(self) -> nn.Module:
        return self.transform(self.base())

    @property
    def root(self) -> Callable[[], nn.Module]:
        """The builder the user gave (or a capacity remedy resized), under every transform."""
        return self.base.root if isinstance(self.base, TransformedBuilder) else self.base

    @property
    def transforms(self) -> list[ModelTransform]:
        """The transforms in the order they are applied to a fresh model."""
        earlier = self.base.transforms if isinstance(self.base, TransformedBuilder) else []
        return [*earlier, self.transform]


def python_literal(value: Any, imports: set[str]) -> str:
    """Python source that rebuilds ``value``, adding the modules it names to ``imports``:
    a tensor becomes zeros of its shape and dtype, a function or class its dotted name."""
    if isinstance(value, torch.Tensor):
        imports.add("torch")
        return f"torch.zeros({tuple(value.shape)!r}, dtype={value.dtype})"
    if isinstance(value, functools.partial):
        imports.add("functools")
        args = [python_literal(a, imports) for a in value.args]
        args += [f"{k}={python_literal(v, imports)}" for k, v in value.keywords.items()]
        return f"functools.partial({', '.join([python_literal(value.func, imports), *args])})"
    if isinstance(value, type) or callable(value) and hasattr(value, "__qualname__"):
        imports.add(value.__module__)
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def transform_model(
    exp: Experiment,
    remedy: str,
    code: str,
    fn: Callable[..., nn.Module],
    /,
    **kwargs: Any,
) -> Experiment:
    """Wrap the builder so every fresh model gets ``fn(model, **kwargs)``; fail now if it
    cannot. ``fn`` is a module-level function (see ``ModelTransform``)."""
    transform = ModelTransform(fn, **kwargs)
    transform(exp.build())  # surfaces a Prescription (or a bug) before any training is spent
    builder = TransformedBuilder(exp.model, transform)
    return record_change(exp, remedy, code, record={"transform": transform}, model=builder)


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

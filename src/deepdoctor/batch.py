"""How a batch maps to a forward call: one tensor, several inputs, or keyword arguments.

A batch is split into the model's inputs and the targets:

- ``(x, y)``: ``model(x)``, targets ``y``;
- ``((x, mask), y)`` (several inputs in a tuple or list): ``model(x, mask)``;
- ``({"input_ids": ..., "attention_mask": ...}, y)``: ``model(input_ids=..., ...)``;
- a dict with ``x`` and ``y`` (or ``input`` / ``inputs`` and ``target`` / ``label`` ...):
  ``model(x)``, targets ``y``;
- any other dict (a Hugging Face batch): every entry as a keyword argument, the targets from
  its ``labels`` (or ``label``). ``labels`` is passed to the forward too when the forward
  takes it (a Hugging Face model then computes its own loss), and left out otherwise.

Several inputs travel as an ``Inputs``: it slices, concatenates and moves like a tensor, so
the training loop, the evaluation and the checkup treat it as they treat ``X``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

LABEL_KEYS = ("labels", "label", "y", "target", "targets")
INPUT_KEYS = ("x", "input", "inputs")


@dataclass
class Inputs:
    """A batch's inputs as positional and keyword arguments of the forward call."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def tensors(self) -> list[torch.Tensor]:
        values = [*self.args, *self.kwargs.values()]
        return [v for v in values if isinstance(v, torch.Tensor)]

    @property
    def first(self) -> torch.Tensor | None:
        """The first tensor (whose statistics a checkup reports as the input's)."""
        found = self.tensors()
        return found[0] if found else None

    def __len__(self) -> int:
        first = next((t for t in self.tensors() if t.dim()), None)
        return len(first) if first is not None else 0

    def _map(self, fn: Any) -> Inputs:
        n = len(self)

        def apply(v: Any) -> Any:
            return fn(v) if isinstance(v, torch.Tensor) and v.dim() and len(v) == n else v

        return Inputs(
            tuple(apply(a) for a in self.args), {k: apply(v) for k, v in self.kwargs.items()}
        )

    def __getitem__(self, index: Any) -> Inputs:
        return self._map(lambda t: t[index])

    def to(self, *args: Any, **kwargs: Any) -> Inputs:
        return self._map(lambda t: t.to(*args, **kwargs))

    @property
    def keys(self) -> list[str]:
        return [f"positional {i}" for i in range(len(self.args))] + list(self.kwargs)

    def describe(self) -> str:
        """The inputs' shapes, for a message."""
        parts = [f"{k} {tuple(v.shape)}" for k, v in zip(self.keys, self.values(), strict=True)]
        return ", ".join(parts)

    def values(self) -> list[Any]:
        return [*self.args, *self.kwargs.values()]

    @staticmethod
    def cat(parts: Sequence[Inputs]) -> Inputs:
        """Batches joined along the batch axis; every input must keep its shape past it."""
        first = parts[0]
        for p in parts[1:]:
            for key, a, b in zip(first.keys, first.values(), p.values(), strict=True):
                if isinstance(a, torch.Tensor) and a.shape[1:] != b.shape[1:]:
                    raise ValueError(
                        f"the batches' {key} have different shapes past the batch axis "
                        f"({tuple(a.shape)} and {tuple(b.shape)}); pad every batch to one "
                        "length (e.g. a tokenizer's padding='max_length')"
                    )

        def join(values: list[Any]) -> Any:
            return torch.cat(values) if isinstance(values[0], torch.Tensor) else values[0]

        args = tuple(join([p.args[i] for p in parts]) for i in range(len(first.args)))
        kwargs = {k: join([p.kwargs[k] for p in parts]) for k in first.kwargs}
        return Inputs(args, kwargs)


def split_batch(batch: Any) -> tuple[Any, Any]:
    """(inputs, targets) of one batch: a tensor or an ``Inputs``, and the targets."""
    if isinstance(batch, Mapping):
        return _split_dict(batch)
    if isinstance(batch, tuple | list) and len(batch) >= 2:
        return as_inputs(batch[0]), batch[1]
    raise TypeError(
        "each batch must be (inputs, targets), ((input, ...), targets), or a dict with "
        f"'labels' (or 'x' and 'y'); got {type(batch).__name__}"
    )


def as_inputs(x: Any) -> Any:
    """A tensor stays a tensor; a tuple or list of inputs or a dict becomes an ``Inputs``."""
    if isinstance(x, Mapping):
        return Inputs(kwargs=dict(x))
    if isinstance(x, tuple | list):
        return Inputs(args=tuple(x))
    return x


def _split_dict(batch: Mapping[str, Any]) -> tuple[Any, Any]:
    xkey = next((k for k in INPUT_KEYS if k in batch), None)
    ykey = next((k for k in LABEL_KEYS if k in batch), None)
    if ykey is None:
        raise TypeError(
            f"the batch is a dict with keys {sorted(batch)} but no targets: deepdoctor reads "
            f"them from {' / '.join(repr(k) for k in LABEL_KEYS)}; add 'labels'"
        )
    if xkey is not None:
        return as_inputs(batch[xkey]), batch[ykey]
    return Inputs(kwargs=dict(batch)), batch[ykey]


def call_model(model: nn.Module, x: Any) -> Any:
    """``model(x)``, or the forward call an ``Inputs`` stands for; a forward that needs an
    argument the batch lacks gets one sentence naming it and the batch's keys."""
    if not isinstance(x, Inputs):
        return model(x)
    kwargs = dict(x.kwargs)
    params = _forward_parameters(model)
    if params is not None:
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        if not takes_any:
            kwargs = {k: v for k, v in kwargs.items() if k in params or k not in LABEL_KEYS}
        missing = _missing(params, len(x.args), kwargs)
        if missing:
            raise ValueError(
                f"the model's forward needs the argument {missing!r}, which the batch does not "
                f"have (its keys: {', '.join(x.keys)}); add it to the batch, or give it a "
                "default in forward"
            )
    return model(*x.args, **kwargs)


def _forward_parameters(model: nn.Module) -> Mapping[str, inspect.Parameter] | None:
    try:
        return inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None


def _missing(
    params: Mapping[str, inspect.Parameter], n_args: int, kwargs: Mapping[str, Any]
) -> str | None:
    positional = [
        p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    for p in positional[n_args:]:
        if p.default is p.empty and p.name not in kwargs:
            return p.name
    for p in params.values():
        if p.kind is p.KEYWORD_ONLY and p.default is p.empty and p.name not in kwargs:
            return p.name
    return None


def model_loss(output: Any) -> torch.Tensor | None:
    """The loss a model computed itself (a Hugging Face ``ModelOutput``'s or a dict's
    ``loss``), or None."""
    if isinstance(output, Mapping):
        loss = output.get("loss")
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            return loss.reshape(())
    return None

"""Fine-tuning: which layers are pretrained, which are frozen, how far the pretrained ones move.

Nothing in a weight tensor says whether it was loaded from a checkpoint or drawn a moment ago,
so deepdoctor is told: ``pretrained=`` (``diagnose``, ``Probe``, ``Experiment``) takes the
module names of the pretrained part (a name covers the modules under it: ``"encoder"``
covers ``encoder.0`` and ``encoder.1``), or the state dict that was loaded into the model
(its parameter keys name the layers whose weights were loaded; a new head is missing from
it). The other trainable layers are the new head.

What is measured: the drift of each trainable pretrained layer, ||W_t - W_0|| / ||W_0|| over
its parameters, after the first ``DRIFT_STEPS`` optimizer steps (W_0: the weights when
training began). ``detectors.transfer`` judges it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .stats import ROOT_NAME, global_squares, local_part

# The drift is read once, after this many steps: fine-tuning wipes out pretrained layers
# early, while the new head's gradients are large and random (at a destructive rate half of
# the 10-step drift is there after 5 steps, see detectors/transfer.py), and a fixed step count
# keeps the figure comparable between runs of different lengths.
DRIFT_STEPS = 10

PretrainedSpec = str | Iterable[str] | Mapping[str, Any] | None


def _owners(model: nn.Module) -> dict[str, str]:
    """Parameter name -> the name of the module that owns it (the root as ROOT_NAME)."""
    return {
        f"{name}.{pname}" if name else pname: name or ROOT_NAME
        for name, module in model.named_modules()
        for pname, _ in module.named_parameters(recurse=False)
    }


def pretrained_layers(model: nn.Module, spec: PretrainedSpec) -> list[str] | None:
    """The names of the parameter-owning modules that ``spec`` marks as pretrained, in the
    model's order; None when ``spec`` is None (nothing said, nothing judged)."""
    if spec is None:
        return None
    owners = _owners(model)
    if isinstance(spec, Mapping):
        loaded = [k for k in spec if k in owners]
        if not loaded:
            raise ValueError(
                f"none of the {len(spec)} keys of the pretrained state dict names a parameter "
                "of this model; pass the state dict you loaded into it, or the pretrained "
                "modules' names (pretrained=['encoder'])"
            )
        chosen = {owners[k] for k in loaded}
        return [n for n in dict.fromkeys(owners.values()) if n in chosen]
    names = [spec] if isinstance(spec, str) else list(spec)
    if not all(isinstance(n, str) for n in names):
        raise TypeError(
            "pretrained takes module names (pretrained=['encoder']) or a state dict, got "
            f"{[type(n).__name__ for n in names if not isinstance(n, str)][0]} in it"
        )
    modules = {n or ROOT_NAME for n, _ in model.named_modules()}
    unknown = [n for n in names if n not in modules]
    if unknown:
        top = [n for n, _ in model.named_children()]
        raise ValueError(
            f"pretrained names {unknown} are not modules of this model; its top-level "
            f"modules are {top} (a name covers the modules under it)"
        )
    return [
        layer
        for layer in dict.fromkeys(owners.values())
        if any(layer == n or n == ROOT_NAME or layer.startswith(n + ".") for n in names)
    ]


def frozen_layers(model: nn.Module) -> list[str]:
    """Modules whose own parameters are all frozen (requires_grad False), in model order."""
    return [
        name or ROOT_NAME
        for name, module in model.named_modules()
        if (own := list(module.parameters(recurse=False))) and not any(p.requires_grad for p in own)
    ]


class DriftMeter:
    """The weights of the trainable pretrained layers when training began, and how far they
    have moved since (one copy of those weights, released once measured).

    ``sharded``: the parameters are sharded over the ranks (FSDP2): each rank copies its
    shards, and the norms are global, as the Probe's are (``stats.global_squares``)."""

    def __init__(self, layers: Mapping[str, Sequence[torch.Tensor]], sharded: bool = False) -> None:
        self.names = [n for n, ps in layers.items() if ps]
        self.params = [p for n in self.names for p in layers[n]]
        self.layer_of = [i for i, n in enumerate(self.names) for _ in layers[n]]
        self.sharded = sharded
        self.start: list[torch.Tensor] | None = None

    def _parts(self) -> list[torch.Tensor]:
        """The parameters, or this rank's shards of them."""
        return [local_part(p) for p in self.params] if self.sharded else list(self.params)

    def begin(self) -> None:
        if self.start is None and self.params:
            with torch.no_grad():
                self.start = [p.detach().clone() for p in self._parts()]

    def measure(self) -> torch.Tensor | None:
        """||W - W_0|| and ||W_0|| per parameter, on the device, for ``drift(values)``; the
        copy is released. None before ``begin()``. Sharded: one all-reduce."""
        if self.start is None:
            return None
        with torch.no_grad():
            moved = torch._foreach_sub(self._parts(), self.start)
            if self.sharded:
                flat = global_squares([*moved, *self.start], [*self.params, *self.params])
                flat = flat.sqrt()
            else:
                norms = (*torch._foreach_norm(moved), *torch._foreach_norm(self.start))
                flat = torch.stack([t.double() for t in norms])
        self.start = None
        return flat

    def drift(self, read: Sequence[float]) -> dict[str, float]:
        """||W - W_0|| / ||W_0|| per layer, from the values of ``measure()``."""
        k = len(self.params)
        num, den = [0.0] * len(self.names), [0.0] * len(self.names)
        for j, i in enumerate(self.layer_of):
            num[i] += read[j] ** 2
            den[i] += read[k + j] ** 2
        return {
            n: (num[i] / den[i]) ** 0.5 if den[i] > 0 else float("nan")
            for i, n in enumerate(self.names)
        }

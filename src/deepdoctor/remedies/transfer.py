"""Fine-tuning remedies: discriminative_lr, freeze_pretrained.

Both need to know which layers are pretrained: ``Experiment(..., pretrained=["encoder"])``
(module names, or the loaded state dict; ``deepdoctor.pretrained``). Without it they are
prescriptions. ``lr_warmup``, the third remedy of pretrained_drift, is the optimisation one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..experiment import Experiment
from ..pretrained import pretrained_layers
from ..stats import ROOT_NAME
from .base import Context, Prescription, Remedy, record_change, transform_model
from .optimization import OptFactory, base_factory

# The pretrained part trains at a tenth of the head's rate: the usual backbone-to-head ratio
# of fine-tuning recipes, and in the calibration of detectors/transfer.py a tenth of a
# destructive Adam 1e-2 (drift 0.70-0.74 in 10 steps) is the sane 1e-3 (0.11).
DISCRIMINATIVE_FACTOR = 0.1


def _layers(exp: Experiment, remedy: str) -> list[str]:
    layers = pretrained_layers(exp.build(), exp.pretrained) if exp.pretrained is not None else []
    if not layers:
        raise Prescription(
            remedy,
            "deepdoctor does not know which layers are pretrained; pass "
            "Experiment(..., pretrained=['encoder']) (module names or the loaded state dict)",
        )
    return layers


def _own_parameters(model: nn.Module, names: Sequence[str]) -> list[nn.Parameter]:
    return [
        p
        for n in names
        for p in (model if n == ROOT_NAME else model.get_submodule(n)).parameters(recurse=False)
    ]


def freeze(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """Stop the named modules' own parameters from training (requires_grad False)."""
    for p in _own_parameters(model, names):
        p.requires_grad_(False)
    return model


class DiscriminativeLR:
    """An optimizer factory that gives the pretrained modules' parameters ``factor`` times
    their group's rate. ``training.make_optimizer`` passes the model (``takes_model``), since
    a factory given only the parameters cannot tell them apart; without it, the base factory.
    A class, not a closure, so a treated experiment pickles."""

    takes_model = True

    def __init__(self, factory: OptFactory, names: Sequence[str], factor: float) -> None:
        self.factory = factory
        self.names = list(names)
        self.factor = factor

    def __call__(self, params: Any, model: nn.Module | None = None) -> torch.optim.Optimizer:
        opt = self.factory(params)
        if model is None:
            return opt
        slow = {id(p) for p in _own_parameters(model, self.names)}
        groups = []
        for group in opt.param_groups:
            settings = {k: v for k, v in group.items() if k != "params"}
            rest = [p for p in group["params"] if id(p) not in slow]
            tuned = [p for p in group["params"] if id(p) in slow]
            groups += [{**settings, "params": rest}] if rest else []
            if tuned:
                groups.append({**settings, "params": tuned, "lr": group["lr"] * self.factor})
        cls: Any = type(opt)
        try:
            return cls(groups, **opt.defaults)
        except TypeError:  # a constructor that does not take all its defaults back
            return cls(groups)


def _discriminative_lr(exp: Experiment, ctx: Context) -> Experiment:
    layers = _layers(exp, "discriminative_lr")
    factory = DiscriminativeLR(base_factory(exp), layers, DISCRIMINATIVE_FACTOR)
    return record_change(
        exp,
        "discriminative_lr",
        f"optimizer: a parameter group for {layers} with lr x {DISCRIMINATIVE_FACTOR}",
        optimizer=factory,
    )


def _freeze_pretrained(exp: Experiment, ctx: Context) -> Experiment:
    layers = _layers(exp, "freeze_pretrained")
    code = f"deepdoctor.remedies.transfer.freeze(model, {layers!r})  # after loading weights"
    return transform_model(exp, "freeze_pretrained", code, freeze, names=layers)


REMEDIES = [
    Remedy(
        "discriminative_lr",
        "transfer",
        f"train the pretrained layers at {DISCRIMINATIVE_FACTOR}x the head's learning rate",
        _discriminative_lr,
    ),
    Remedy(
        "freeze_pretrained",
        "transfer",
        "freeze the pretrained layers and train the new head only",
        _freeze_pretrained,
    ),
]

"""Built-in experiments, broken and healthy, that the CLI names as ``preset:NAME``.

Each preset is a small function returning an Experiment on embedded data, so that
``deepdoctor diagnose preset:NAME`` runs anywhere in seconds to a minute.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import data, models
from .experiment import Experiment, TargetError


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    build: Callable[[], Experiment]
    expected: tuple[str, ...] = ()  # the finding kinds this setup is known to show


PRESETS: dict[str, Preset] = {}


def preset(name: str, description: str, expected: tuple[str, ...] = ()
           ) -> Callable[[Callable[[], Experiment]], Callable[[], Experiment]]:
    def register(fn: Callable[[], Experiment]) -> Callable[[], Experiment]:
        PRESETS[name] = Preset(name, description, fn, expected)
        return fn

    return register


def get_preset(name: str) -> Experiment:
    if name not in PRESETS:
        raise TargetError(
            f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))} "
            "(see `deepdoctor presets`)"
        )
    exp = PRESETS[name].build()
    exp.name = name
    exp.description = PRESETS[name].description
    return exp


def sgd(lr: float, momentum: float = 0.0) -> Callable[..., torch.optim.Optimizer]:
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum)


@preset("sigmoid-mlp50-digits",
        "50-layer sigmoid MLP, torch's default init, SGD lr 0.1, on digits: stuck at chance",
        expected=("vanishing_gradients", "stalled_loss", "underfitting"))
def sigmoid_mlp50_digits() -> Experiment:
    split = data.load("digits")
    return Experiment(
        model=lambda: models.mlp(64, 10, depth=50, width=64, activation="sigmoid"),
        train=split.train, val=split.val, optimizer=sgd(0.1), steps=300, batch_size=64,
        n_classes=split.n_classes,
    )


@preset("healthy-mlp-digits",
        "3-layer ReLU MLP, He init, SGD with momentum, on standardised digits",
        expected=())
def healthy_mlp_digits() -> Experiment:
    split = data.load("digits")
    return Experiment(
        model=lambda: models.mlp(64, 10, depth=3, width=128, activation="relu", init="he"),
        train=split.train, val=split.val, optimizer=sgd(0.05, momentum=0.9), steps=300,
        n_classes=split.n_classes,
    )

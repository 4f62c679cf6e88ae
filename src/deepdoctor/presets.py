"""Built-in experiments, broken and healthy, that the CLI names as ``preset:NAME``.

Each preset is a small function returning an Experiment on embedded data, so that
``deepdoctor diagnose preset:NAME`` runs anywhere in seconds to a minute.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import data, models
from .experiment import Experiment


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    build: Callable[[], Experiment]
    expected: tuple[str, ...] = ()  # the finding kinds this setup is known to show


PRESETS: dict[str, Preset] = {}


class UnknownPreset(ValueError):
    """A name that is not among the presets."""


def preset(
    name: str, description: str, expected: tuple[str, ...] = ()
) -> Callable[[Callable[[], Experiment]], Callable[[], Experiment]]:
    def register(fn: Callable[[], Experiment]) -> Callable[[], Experiment]:
        PRESETS[name] = Preset(name, description, fn, expected)
        return fn

    return register


def get_preset(name: str) -> Experiment:
    if name not in PRESETS:
        raise UnknownPreset(
            f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))} "
            "(see `deepdoctor presets`)"
        )
    exp = PRESETS[name].build()
    exp.name = name
    exp.description = PRESETS[name].description
    return exp


def sgd(lr: float, momentum: float = 0.0) -> Callable[..., torch.optim.Optimizer]:
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum)


@preset(
    "sigmoid-mlp50-digits",
    "50-layer sigmoid MLP, torch's default init, SGD lr 0.1, on digits: stuck at chance",
    expected=("vanishing_gradients", "stalled_loss", "underfitting"),
)
def sigmoid_mlp50_digits() -> Experiment:
    split = data.load("digits")
    return Experiment(
        model=lambda: models.mlp(64, 10, depth=50, width=64, activation="sigmoid"),
        train=split.train,
        val=split.val,
        optimizer=sgd(0.1),
        steps=300,
        batch_size=64,
        n_classes=split.n_classes,
    )


@preset(
    "healthy-mlp-digits",
    "3-layer ReLU MLP, He init, SGD with momentum, on standardised digits",
    expected=(),
)
def healthy_mlp_digits() -> Experiment:
    split = data.load("digits")
    return Experiment(
        model=lambda: models.mlp(64, 10, depth=3, width=128, activation="relu", init="he"),
        train=split.train,
        val=split.val,
        optimizer=sgd(0.05, momentum=0.9),
        steps=300,
        n_classes=split.n_classes,
    )


def adam(lr: float, eps: float = 1e-8) -> Callable[..., torch.optim.Optimizer]:
    return lambda params: torch.optim.Adam(params, lr=lr, eps=eps)


def _biases_at(build: Callable[[], torch.nn.Module], value: float) -> Callable[[], torch.nn.Module]:
    """A builder whose hidden layers' biases start at ``value`` (the output layer's do not)."""

    def make() -> torch.nn.Module:
        model = build()
        with torch.no_grad():
            for name, module in model.named_modules():
                bias = getattr(module, "bias", None)
                if (
                    isinstance(module, torch.nn.Linear)
                    and bias is not None
                    and not name.endswith("out")
                ):
                    bias.fill_(value)
        return model

    return make


def _digits_exp(
    model: Callable[[], torch.nn.Module],
    optimizer: Callable[..., torch.optim.Optimizer],
    steps: int,
    **load: object,
) -> Experiment:
    split = data.load("digits", **load)  # type: ignore[arg-type]
    return Experiment(
        model=model,
        train=split.train,
        val=split.val,
        optimizer=optimizer,
        steps=steps,
        n_classes=split.n_classes,
    )


# -- healthy: each must come out with no warning or critical finding -------------------------


@preset("healthy-cnn-digits", "3-layer ReLU CNN, He init, SGD with momentum, on digits images")
def healthy_cnn_digits() -> Experiment:
    split = data.load("digits", flatten=False)
    return Experiment(
        model=lambda: models.cnn((1, 8, 8), 10, depth=3, width=16, init="he"),
        train=split.train,
        val=split.val,
        optimizer=sgd(0.02, momentum=0.9),
        steps=250,
        n_classes=split.n_classes,
    )


@preset(
    "healthy-sigmoid-digits",
    "one hidden layer of sigmoid units, SGD with momentum: sigmoid is not a disease",
)
def healthy_sigmoid_digits() -> Experiment:
    return _digits_exp(
        lambda: models.mlp(64, 10, depth=1, width=64, activation="sigmoid"),
        sgd(0.5, momentum=0.9),
        steps=250,
    )


@preset(
    "healthy-transformer-seq",
    "2-block pre-LN transformer, Adam, reading 12 teacher features as a sequence",
)
def healthy_transformer_seq() -> Experiment:
    split = data.load("teacher", features=12, depth=1)
    return Experiment(
        model=lambda: models.transformer(12, split.n_classes, depth=2, width=32, heads=4),
        train=split.train,
        val=split.val,
        optimizer=adam(1e-2),
        steps=200,
        n_classes=split.n_classes,
    )


@preset("healthy-lstm-seq", "small LSTM, Adam, reading 4 teacher features as a sequence")
def healthy_lstm_seq() -> Experiment:
    split = data.load("teacher", features=4, depth=1)
    return Experiment(
        model=lambda: models.rnn(1, split.n_classes, cell="lstm", width=32),
        train=split.train,
        val=split.val,
        optimizer=adam(3e-2),
        steps=200,
        n_classes=split.n_classes,
    )


# -- broken: one per finding family, each known to show its kinds --------------------------


@preset(
    "exploding-bn-mlp50-teacher",
    "50 Linear-BatchNorm-ReLU layers without skips: the gradient explodes towards the "
    "input at initialisation",
    expected=("exploding_gradients",),
)
def exploding_bn_mlp50() -> Experiment:
    split = data.load("teacher")
    return Experiment(
        model=lambda: models.mlp(20, split.n_classes, depth=50, width=32, init="he", norm="batch"),
        train=split.train,
        val=split.val,
        optimizer=sgd(0.01),
        steps=100,
        n_classes=split.n_classes,
    )


@preset(
    "saturated-tanh-digits",
    "tanh MLP with weights N(0, 1): units pinned at +-1",
    expected=("saturated_units", "bad_init_loss"),
)
def saturated_tanh_digits() -> Experiment:
    return _digits_exp(
        lambda: models.mlp(64, 10, depth=4, width=64, activation="tanh", init="normal:1.0"),
        sgd(0.05),
        steps=150,
    )


@preset(
    "dead-relu-digits",
    "ReLU MLP whose biases start at -3: most units never fire",
    expected=("dead_units", "stalled_loss"),
)
def dead_relu_digits() -> Experiment:
    return _digits_exp(
        _biases_at(lambda: models.mlp(64, 10, depth=3, width=64, init="he"), -3.0),
        sgd(0.05, momentum=0.9),
        steps=150,
    )


@preset(
    "diverging-lr10-digits",
    "SGD at lr 10 with momentum: the loss blows up in 3 steps",
    expected=("diverging_loss",),
)
def diverging_lr10_digits() -> Experiment:
    return _digits_exp(
        lambda: models.mlp(64, 10, depth=3, width=64, init="he"), sgd(10.0, momentum=0.9), steps=150
    )


@preset(
    "diverging-relu-mlp20-digits",
    "20-layer ReLU MLP, He init, SGD lr 0.3 with momentum 0.9: blows up within 15 steps",
    expected=("diverging_loss", "exploding_gradients"),
)
def diverging_relu_mlp20_digits() -> Experiment:
    return _digits_exp(
        lambda: models.mlp(64, 10, depth=20, width=64, init="he"), sgd(0.3, momentum=0.9), steps=200
    )


@preset(
    "nonfinite-adam-eps0-digits",
    "Adam with eps=0: blank border pixels give zero gradients, and 0/0 is NaN",
    expected=("nonfinite",),
)
def nonfinite_adam_eps0_digits() -> Experiment:
    return _digits_exp(
        lambda: models.mlp(64, 10, depth=2, width=64, init="he"), adam(1e-3, eps=0.0), steps=100
    )


@preset(
    "oscillating-momentum-cnn-digits",
    "CNN with SGD momentum 0.99: the heavy ball overshoots back and forth",
    expected=("oscillating_loss",),
)
def oscillating_momentum_cnn_digits() -> Experiment:
    split = data.load("digits", flatten=False)
    return Experiment(
        model=lambda: models.cnn((1, 8, 8), 10, depth=2, width=16),
        train=split.train,
        val=split.val,
        optimizer=sgd(0.1, momentum=0.99),
        steps=150,
        n_classes=split.n_classes,
    )


@preset(
    "stalled-tiny-lr-digits",
    "sound ReLU MLP with SGD at lr 1e-4: the weights barely move",
    expected=("stalled_loss",),
)
def stalled_tiny_lr_digits() -> Experiment:
    return _digits_exp(
        lambda: models.mlp(64, 10, depth=3, width=64, init="he"), sgd(1e-4), steps=150
    )


@preset(
    "unscaled-raw-digits", "digits' raw 0..16 pixels into a ReLU MLP", expected=("unscaled_inputs",)
)
def unscaled_raw_digits() -> Experiment:
    return _digits_exp(
        lambda: models.mlp(64, 10, depth=2, width=64), sgd(0.01), steps=150, standardize=False
    )


@preset(
    "imbalanced-digits",
    "digits with the most frequent class 30x the rarest",
    expected=("class_imbalance",),
)
def imbalanced_digits() -> Experiment:
    return _digits_exp(
        lambda: models.mlp(64, 10, depth=2, width=64, init="he"),
        sgd(0.05, momentum=0.9),
        steps=150,
        imbalance=30.0,
    )


@preset(
    "overfitting-noisy-digits",
    "wide MLP memorising 300 digits with 40% wrong labels, Adam",
    expected=("overfitting",),
)
def overfitting_noisy_digits() -> Experiment:
    return _digits_exp(
        lambda: models.mlp(64, 10, depth=2, width=256),
        adam(3e-3),
        steps=300,
        subset=300,
        label_noise=0.4,
    )


@preset(
    "underfitting-linear-spirals",
    "a linear model on three spirals: converged and wrong",
    expected=("underfitting",),
)
def underfitting_linear_spirals() -> Experiment:
    split = data.load("spirals")
    return Experiment(
        model=lambda: models.mlp(2, 3, depth=0),
        train=split.train,
        val=split.val,
        optimizer=adam(3e-2),
        steps=200,
        n_classes=split.n_classes,
    )


@preset(
    "still-improving-digits",
    "sound MLP, plain SGD at lr 0.01, stopped after 100 steps",
    expected=("still_improving",),
)
def still_improving_digits() -> Experiment:
    return _digits_exp(
        lambda: models.mlp(64, 10, depth=2, width=64, init="he"), sgd(0.01), steps=100
    )

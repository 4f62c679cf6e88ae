"""The calibration suite: broken and healthy training setups, each with the kinds it must show.

Every case is an Experiment on embedded data with a quick budget (a few seconds on one core).
``expected`` are the finding kinds the case must produce (at warning or critical, for a
broken case); ``allowed`` are further kinds that honestly come with the same breakage (a loss
that blows up also stalls, a NaN run also diverged) and are not counted as false alarms.
A healthy case must produce no warning or critical finding at all.

``tests/test_calibration.py`` runs them all; ``python -m tests.cases`` prints the confusion
table. The checkup engineer reuses this registry for an agreement test.
"""

from __future__ import annotations

import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import torch
from torch import nn

from deepdoctor import data, models
from deepdoctor.experiment import Experiment


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], Experiment]
    family: str  # "data/architecture": which embedded data set, which models.* builder
    expected: frozenset[str] = frozenset()
    healthy: bool = False
    allowed: frozenset[str] = field(default_factory=frozenset)
    description: str = ""
    # A detector defect this case shows today, named (what is wrong, with its evidence): the
    # case stays in the sweep and in docs/calibration.md's figures, and out of the suite's
    # per-case test (tests/test_calibration.py) and held-out figures (tests/test_held_out.py)
    # until the detector is fixed, so main keeps passing without a weakened threshold.
    defect: str = ""

    @property
    def held_out(self) -> bool:
        return self.family in HELD_OUT_FAMILIES


CASES: list[Case] = []

# The calibration split, by family (data x architecture), never by case: thresholds are tuned
# on the tuning half and judged on the held-out half. It was fixed before any multi-seed result
# was seen, from the registry alone: the families were divided so that each half holds about
# half the cases (21 / 21), half the healthy setups (5 / 5) and every one of the 14 kinds among
# its expected kinds. Tuning: the MLPs on digits, teacher and spirals. Held out: every CNN,
# transformer and RNN, and the MLPs on MNIST-1D. Change it only together with a note in
# docs/calibration.md, since numbers measured on different splits do not compare.
HELD_OUT_FAMILIES = frozenset(
    {
        "digits/cnn",
        "mnist1d/cnn",
        "mnist1d/mlp",
        "teacher/transformer",
        "teacher/rnn",
        "spirals/rnn",
        # the later families (tests/cases/families.py), split on 2026-12-02 before any
        # detector ran on them at three seeds: see docs/calibration.md
        "overlap/linear",
        "regression/mlp",
        "digits/functional",
    }
)


def case(
    name: str,
    *,
    family: str,
    expected: tuple[str, ...] = (),
    healthy: bool = False,
    allowed: tuple[str, ...] = (),
    defect: str = "",
) -> Callable[[Callable[[], Experiment]], Callable[[], Experiment]]:
    def register(fn: Callable[[], Experiment]) -> Callable[[], Experiment]:
        def build() -> Experiment:
            exp = fn()
            exp.name = name
            return exp

        CASES.append(
            Case(
                name,
                build,
                family,
                frozenset(expected),
                healthy,
                frozenset(allowed),
                (fn.__doc__ or "").strip(),
                defect,
            )
        )
        return fn

    return register


# -- data, cached: each case builds its Experiment from the same few splits -----------------


@cache
def digits(**options: object) -> data.Split:
    return data.load("digits", **options)  # type: ignore[arg-type]


@cache
def mnist1d(**options: object) -> data.Split:
    return data.load("mnist1d", **options)  # type: ignore[arg-type]


@cache
def teacher(**options: object) -> data.Split:
    return data.load("teacher", **options)  # type: ignore[arg-type]


@cache
def spirals(**options: object) -> data.Split:
    return data.load("spirals", **options)  # type: ignore[arg-type]


def sgd(lr: float, momentum: float = 0.0) -> Callable[..., torch.optim.Optimizer]:
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum)


def adam(lr: float) -> Callable[..., torch.optim.Optimizer]:
    return lambda params: torch.optim.Adam(params, lr=lr)


def shifted_bias(build: Callable[[], nn.Module], value: float) -> Callable[[], nn.Module]:
    """A builder whose hidden Linear / Conv biases all start at ``value`` (e.g. -3: dead ReLUs)."""

    def make() -> nn.Module:
        model = build()
        with torch.no_grad():
            for name, module in model.named_modules():
                if (
                    isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d)
                    and module.bias is not None
                    and not name.endswith("out")
                ):
                    module.bias.fill_(value)
        return model

    return make


def exp(
    split: data.Split,
    model: Callable[[], nn.Module],
    optimizer: Callable[..., torch.optim.Optimizer],
    steps: int,
    batch_size: int = 64,
    train: tuple[torch.Tensor, torch.Tensor] | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    **kw: object,
) -> Experiment:
    return Experiment(
        model=model,
        train=train or split.train,
        val=val or split.val,
        optimizer=optimizer,
        steps=steps,
        batch_size=batch_size,
        n_classes=split.n_classes,
        **kw,
    )  # type: ignore[arg-type]


# -- healthy setups: each must come out with no warning or critical finding ----------------


@case("healthy-relu-bn-mlp-teacher", family="teacher/mlp", healthy=True)
def _healthy_relu_bn_mlp() -> Experiment:
    """6-layer ReLU MLP, He init, batch norm, SGD momentum, on the teacher task."""
    s = teacher()
    return exp(
        s,
        lambda: models.mlp(20, s.n_classes, depth=6, width=64, init="he", norm="batch"),
        sgd(0.05, 0.9),
        steps=250,
    )


@case("healthy-relu-mlp-digits", family="digits/mlp", healthy=True)
def _healthy_relu_mlp() -> Experiment:
    """3-layer ReLU MLP, He init, SGD momentum, standardised digits."""
    s = digits()
    return exp(
        s, lambda: models.mlp(64, 10, depth=3, width=128, init="he"), sgd(0.05, 0.9), steps=250
    )


@case("healthy-preln-transformer-teacher-seq", family="teacher/transformer", healthy=True)
def _healthy_transformer() -> Experiment:
    """2-block pre-LN transformer, Adam, reading 12 teacher features as a sequence.

    800 steps: at 200 it was still improving by the plain-PyTorch measurement of
    ``tests/cases/verify.py`` (twice the steps cut the validation loss by 31-34% at seeds
    0-2); at 800, by 1.5-4.5% (converged)."""
    s = teacher(features=12, depth=1)
    return exp(
        s,
        lambda: models.transformer(12, s.n_classes, depth=2, width=32, heads=4),
        adam(1e-2),
        steps=800,
    )


@case("healthy-lstm-teacher-seq", family="teacher/rnn", healthy=True)
def _healthy_lstm() -> Experiment:
    """A small LSTM reading 8 teacher features as an 8-step sequence, Adam.

    8 features, not 4: the 4-feature teacher's classes are 155..1198 (7.7x, class-imbalanced
    by the plain-PyTorch measurement of ``tests/cases/verify.py``); 8 features give 1.3x.
    400 steps: at 200 twice the steps cut the validation loss by 11-24% at seeds 0-2 (still
    improving); 400 -> 800 changes it by -8% to +10%."""
    s = teacher(features=8, depth=1)
    return exp(s, lambda: models.rnn(1, s.n_classes, cell="lstm", width=32), adam(3e-2), steps=400)


@case("healthy-shallow-sigmoid-digits", family="digits/mlp", healthy=True)
def _healthy_sigmoid() -> Experiment:
    """One hidden layer of sigmoid units on digits, SGD: sigmoid itself is not a disease."""
    s = digits()
    return exp(
        s,
        lambda: models.mlp(64, 10, depth=1, width=64, activation="sigmoid"),
        sgd(0.5, 0.9),
        steps=250,
    )


@case("healthy-relu-cnn-digits", family="digits/cnn", healthy=True)
def _healthy_cnn() -> Experiment:
    """3-layer ReLU CNN, He init, SGD momentum, digits as 8x8 images."""
    s = digits(flatten=False)
    return exp(
        s,
        lambda: models.cnn((1, 8, 8), 10, depth=3, width=16, init="he"),
        sgd(0.02, 0.9),
        steps=250,
    )


@case("healthy-tanh-mlp-spirals", family="spirals/mlp", healthy=True)
def _healthy_tanh() -> Experiment:
    """3-layer tanh MLP, Xavier init, Adam, on spirals.

    At 300 steps twice the steps cut the validation loss by 2%, 14%, 18% at seeds 0-2 (absent,
    borderline, borderline by ``tests/cases/verify.py``): converged enough to stay healthy."""
    s = spirals(turns=1.0)
    return exp(
        s,
        lambda: models.mlp(2, 3, depth=3, width=64, activation="tanh", init="xavier"),
        adam(2e-2),
        steps=300,
    )


@case(
    "still-improving-bn-cnn1d-mnist1d",
    family="mnist1d/cnn",
    expected=("still_improving",),
)
def _still_cnn1d() -> Experiment:
    """4-layer 1-D CNN with batch norm on MNIST-1D, Adam, stopped after 250 steps.

    Labelled healthy until the plain-PyTorch measurement (``tests/cases/verify.py``) found it
    still improving at every seed: twice the steps cut the validation loss by 39-49% at seeds
    0-2 (0.16-0.20 -> 0.09-0.12), and 1000 -> 2000 steps by another 15-27%. MNIST-1D keeps a
    small CNN learning for thousands of steps, so the label follows the measurement."""
    s = mnist1d(flatten=False)
    return exp(
        s, lambda: models.cnn((1, 40), 10, depth=4, width=32, norm="batch"), adam(3e-3), steps=250
    )


@case("healthy-residual-ln-mlp-teacher", family="teacher/mlp", healthy=True)
def _healthy_residual() -> Experiment:
    """10-layer residual ReLU MLP with layer norm, Adam, on the teacher task.

    A final LayerNorm before the output layer, as in a pre-LN transformer: without it the
    residual sum of 10 blocks grows the logits and the loss starts at 2.7x ln 4 (bad_init_loss
    present by the plain-PyTorch measurement at seeds 0-2)."""
    s = teacher()

    def build() -> nn.Module:
        body = models.mlp(20, s.n_classes, depth=10, width=64, norm="layer", residual=True)
        parts = list(body.named_children())
        return nn.Sequential(
            OrderedDict(parts[:-1] + [("final_norm", nn.LayerNorm(64))] + parts[-1:])
        )

    return exp(s, build, adam(1e-3), steps=250)


@case("healthy-gru-spirals-seq", family="spirals/rnn", healthy=True)
def _healthy_gru() -> Experiment:
    """A GRU reading a point of the spirals as a 2-step sequence, Adam.

    Spirals with noise 0.4 (not 0.2), 400 steps (not 200): on the clean spirals the validation
    loss fell to ~0.01 and kept shrinking (twice the steps: -8% to -31% at seeds 0-2, "still
    improving" by the plain-PyTorch measurement); noise 0.4 puts a floor of ~0.14 under it
    (Bayes error), and 400 -> 800 steps changes it by +1% to +7%."""
    s = spirals(turns=0.5, noise=0.4)
    return exp(s, lambda: models.rnn(1, s.n_classes, cell="gru", width=32), adam(3e-2), steps=400)


# -- broken setups ----------------------------------------------------------------------------


@case(
    "vanishing-sigmoid-mlp50-digits",
    family="digits/mlp",
    expected=("vanishing_gradients", "stalled_loss", "underfitting"),
)
def _vanishing_mlp() -> Experiment:
    """The textbook case: 50 sigmoid layers, torch's default init, SGD, stuck at chance."""
    s = digits()
    return exp(
        s, lambda: models.mlp(64, 10, depth=50, width=32, activation="sigmoid"), sgd(0.1), steps=150
    )


@case(
    "vanishing-sigmoid-cnn-digits",
    family="digits/cnn",
    expected=("vanishing_gradients", "stalled_loss"),
    allowed=("underfitting",),
)
def _vanishing_cnn() -> Experiment:
    """12 sigmoid conv layers on digits images, SGD."""
    s = digits(flatten=False)
    return exp(
        s,
        lambda: models.cnn(
            (1, 8, 8), 10, depth=12, width=8, activation="sigmoid", downsample_every=6
        ),
        sgd(0.1),
        steps=150,
    )


@case(
    "vanishing-tanh-rnn-head-mnist1d",
    family="mnist1d/mlp",
    expected=("vanishing_gradients",),
    allowed=("stalled_loss", "underfitting"),
)
def _vanishing_tanh_small_init() -> Experiment:
    """A 20-layer tanh MLP with tiny weights (N(0, 0.05^2)) on MNIST-1D: signals shrink."""
    s = mnist1d()
    return exp(
        s,
        lambda: models.mlp(40, 10, depth=20, width=64, activation="tanh", init="normal:0.05"),
        sgd(0.1, 0.9),
        steps=150,
    )


@case(
    "exploding-bn-relu-mlp50-teacher",
    family="teacher/mlp",
    expected=("exploding_gradients",),
    allowed=("oscillating_loss", "stalled_loss", "underfitting", "bad_init_loss"),
)
def _exploding_bn() -> Experiment:
    """50 layers of Linear-BatchNorm-ReLU without skips: at init the gradient grows by ~1.2x
    per layer towards the input (Yang et al. 2019, a mean field theory of batch norm)."""
    s = teacher()
    return exp(
        s,
        lambda: models.mlp(20, s.n_classes, depth=50, width=32, init="he", norm="batch"),
        sgd(0.01),
        steps=100,
    )


@case(
    "exploding-chaotic-tanh-mlp-mnist1d",
    family="mnist1d/mlp",
    expected=("exploding_gradients",),
    allowed=(
        "saturated_units",
        "oscillating_loss",
        "stalled_loss",
        "underfitting",
        "bad_init_loss",
        "overfitting",
        # a run that starts at a validation loss of 4-6 is still falling: twice the steps
        # cut it by 12%, 24%, 0% at seeds 0-2; at seed 1 it climbs back to 2.6x its lowest
        "still_improving",
        "diverging_loss",
    ),
)
def _exploding_tanh() -> Experiment:
    """20-layer tanh MLP with weights N(0, 0.6^2) (gain 4.8): the chaotic phase, where
    gradients grow geometrically towards the input (Poole et al. 2016).

    Gain 4.8, not 2.4: at N(0, 0.3^2) the first quarter's relative gradients were only ~29x
    the last quarter's (absent by the plain-PyTorch measurement, which needs 1e3); at 0.6 they
    are 3.0e3-4.0e3x at seeds 0-2."""
    s = mnist1d()
    return exp(
        s,
        lambda: models.mlp(40, 10, depth=20, width=64, activation="tanh", init="normal:0.6"),
        sgd(0.01),
        steps=100,
    )


@case(
    "exploding-tanh-rnn-teacher-seq",
    family="teacher/rnn",
    expected=("exploding_gradients",),
    allowed=(
        "bad_init_loss",
        "diverging_loss",
        "nonfinite",
        "oscillating_loss",
        "saturated_units",
        "stalled_loss",
        "underfitting",
    ),
)
def _exploding_rnn() -> Experiment:
    """Vanilla tanh RNN with recurrent weights N(0, 0.35^2) (spectral radius ~2.8) over 20
    steps, SGD: the gradient through time grows geometrically."""
    s = teacher(features=20)
    return exp(
        s,
        lambda: models.rnn(1, s.n_classes, cell="rnn", width=64, init="normal:0.35"),
        sgd(0.01),
        steps=100,
    )


@case(
    "saturated-tanh-mlp-digits",
    family="digits/mlp",
    expected=("saturated_units",),
    allowed=(
        "bad_init_loss",
        "stalled_loss",
        "oscillating_loss",
        "vanishing_gradients",
        "underfitting",
        "overfitting",  # seed 1: validation 3.37 against training 1.66 by the plain measurement
        # the saturated net learns slowly but steadily: twice the steps cut its validation
        # loss by 22%, 16%, 22% at seeds 0-2 (tests/cases/verify.py's still_improving)
        "still_improving",
    ),
)
def _saturated_tanh() -> Experiment:
    """tanh MLP with weights N(0, 1): pre-activations of several units, outputs pinned at +-1."""
    s = digits()
    return exp(
        s,
        lambda: models.mlp(64, 10, depth=4, width=64, activation="tanh", init="normal:1.0"),
        sgd(0.05),
        steps=150,
    )


@case(
    "saturated-sigmoid-raw-mnist1d",
    family="mnist1d/mlp",
    expected=("saturated_units", "unscaled_inputs"),
    allowed=("bad_init_loss", "stalled_loss", "oscillating_loss", "underfitting"),
)
def _saturated_sigmoid() -> Experiment:
    """Sigmoid MLP on MNIST-1D scaled x20 without standardisation: the first layer saturates."""
    s = mnist1d()
    X, Xv = s.X_train * 20, s.X_val * 20
    return exp(
        s,
        lambda: models.mlp(40, 10, depth=2, width=64, activation="sigmoid"),
        sgd(0.1),
        steps=150,
        train=(X, s.y_train),
        val=(Xv, s.y_val),
    )


@case(
    "dead-relu-negative-bias-digits",
    family="digits/mlp",
    expected=("dead_units",),
    # no unit fires, so no gradient reaches a hidden weight (every relative gradient 0 by the
    # plain measurement at seeds 0-2): vanishing gradients are the dead units' consequence
    allowed=("stalled_loss", "underfitting", "vanishing_gradients"),
)
def _dead_bias() -> Experiment:
    """ReLU MLP whose biases start at -3: most units never fire."""
    s = digits()
    return exp(
        s,
        shifted_bias(lambda: models.mlp(64, 10, depth=3, width=64, init="he"), -3.0),
        sgd(0.05, 0.9),
        steps=150,
    )


@case(
    "dead-relu-cnn-negative-bias-mnist1d",
    family="mnist1d/cnn",
    expected=("dead_units",),
    # as the MLP above: every relative gradient 0 at seeds 1 and 2
    allowed=("stalled_loss", "underfitting", "still_improving", "vanishing_gradients"),
)
def _dead_cnn() -> Experiment:
    """1-D ReLU CNN with biases at -3 on MNIST-1D: whole channels stay silent."""
    s = mnist1d(flatten=False)
    return exp(
        s,
        shifted_bias(lambda: models.cnn((1, 40), 10, depth=3, width=16, init="he"), -3.0),
        sgd(0.05, 0.9),
        steps=150,
    )


@case(
    "diverging-mlp-lr10-digits",
    family="digits/mlp",
    expected=("diverging_loss",),
    allowed=("exploding_gradients", "nonfinite", "oscillating_loss"),
)
def _diverging_mlp() -> Experiment:
    """ReLU MLP with SGD at lr 10 and momentum: the loss blows up within a few steps."""
    s = digits()
    return exp(
        s, lambda: models.mlp(64, 10, depth=3, width=64, init="he"), sgd(10.0, 0.9), steps=150
    )


@case(
    "diverging-regression-teacher",
    family="teacher/mlp",
    expected=("diverging_loss",),
    allowed=("exploding_gradients", "nonfinite", "oscillating_loss"),
)
def _diverging_regression() -> Experiment:
    """MSE regression on the teacher's inputs with SGD at lr 1 and momentum: it blows up."""
    s = teacher()
    y, yv = s.X_train[:, :3].sum(1) * 5, s.X_val[:, :3].sum(1) * 5
    e = exp(
        s,
        lambda: models.mlp(20, 1, depth=3, width=64),
        sgd(1.0, 0.9),
        steps=150,
        train=(s.X_train, y),
        val=(s.X_val, yv),
    )
    e.n_classes = None
    return e


@case(
    "diverging-cnn-sgd-high-lr-digits",
    family="digits/cnn",
    expected=("diverging_loss",),
    allowed=("exploding_gradients", "dead_units", "underfitting", "oscillating_loss"),
)
def _diverging_cnn() -> Experiment:
    """ReLU CNN, SGD lr 0.3 with momentum: the loss drops, then climbs back to chance."""
    s = digits(flatten=False)
    return exp(
        s, lambda: models.cnn((1, 8, 8), 10, depth=3, width=16, init="he"), sgd(0.3, 0.9), steps=150
    )


@case(
    "oscillating-tanh-mlp-sgd2-teacher",
    family="teacher/mlp",
    expected=("oscillating_loss",),
    # A loss swinging between 1 and 2.8 whose level does not fall is stalled as well: on
    # this machine the run ends within 5% of where it started (seed 0).
    allowed=("still_improving", "stalled_loss"),
)
def _oscillating_mlp() -> Experiment:
    """tanh MLP with SGD at lr 2: the loss jumps between 1 and 2.8 from step to step."""
    s = teacher()
    return exp(
        s,
        lambda: models.mlp(20, s.n_classes, depth=2, width=64, activation="tanh"),
        sgd(2.0),
        steps=150,
    )


@case(
    "oscillating-cnn-momentum099-digits",
    family="digits/cnn",
    expected=("oscillating_loss",),
    allowed=("diverging_loss", "underfitting", "dead_units", "exploding_gradients"),
)
def _oscillating_cnn() -> Experiment:
    """CNN with SGD momentum 0.99: the heavy ball overshoots back and forth."""
    s = digits(flatten=False)
    return exp(s, lambda: models.cnn((1, 8, 8), 10, depth=2, width=16), sgd(0.1, 0.99), steps=150)


@case(
    "oscillating-mlp-momentum099-teacher",
    family="teacher/mlp",
    expected=("oscillating_loss",),
    allowed=("dead_units", "stalled_loss", "underfitting", "diverging_loss"),
)
def _oscillating_momentum() -> Experiment:
    """ReLU MLP with SGD momentum 0.99 on the teacher task: slow swings, no progress."""
    s = teacher()
    return exp(s, lambda: models.mlp(20, s.n_classes, depth=2, width=64), sgd(0.2, 0.99), steps=150)


@case(
    "stalled-tiny-lr-mlp-digits",
    family="digits/mlp",
    expected=("stalled_loss",),
    allowed=("underfitting",),
)
def _stalled_lr() -> Experiment:
    """A sound ReLU MLP with SGD at lr 1e-4: the weights barely move."""
    s = digits()
    return exp(s, lambda: models.mlp(64, 10, depth=3, width=64, init="he"), sgd(1e-4), steps=150)


@case(
    "stalled-tiny-lr-transformer-teacher-seq",
    family="teacher/transformer",
    expected=("stalled_loss",),
    allowed=("underfitting",),
)
def _stalled_transformer() -> Experiment:
    """A pre-LN transformer with Adam at lr 1e-6."""
    s = teacher(features=8, depth=1)
    return exp(
        s,
        lambda: models.transformer(8, s.n_classes, depth=1, width=16, heads=2),
        adam(1e-6),
        steps=100,
    )


@case(
    "bad-init-large-weights-mlp-digits",
    family="digits/mlp",
    expected=("bad_init_loss",),
    allowed=("dead_units", "overfitting", "still_improving", "exploding_gradients", "underfitting"),
)
def _bad_init_mlp() -> Experiment:
    """ReLU MLP with weights N(0, 0.5^2): the logits start huge, the loss at ~40, not ln 10."""
    s = digits()
    return exp(
        s, lambda: models.mlp(64, 10, depth=2, width=64, init="normal:0.5"), adam(1e-3), steps=150
    )


@case(
    "bad-init-scaled-head-transformer-teacher-seq",
    family="teacher/transformer",
    expected=("bad_init_loss",),
    allowed=("still_improving", "underfitting"),
)
def _bad_init_transformer() -> Experiment:
    """Transformer whose output layer starts 30x too large: confident wrong logits."""
    s = teacher(features=8, depth=1)

    def build() -> nn.Module:
        model = models.transformer(8, s.n_classes, depth=1, width=16, heads=2)
        with torch.no_grad():
            model.out.weight.mul_(30.0)
        return model

    return exp(s, build, adam(3e-3), steps=150)


@case(
    "unscaled-raw-digits-mlp",
    family="digits/mlp",
    expected=("unscaled_inputs",),
    allowed=("bad_init_loss", "dead_units", "oscillating_loss", "still_improving"),
)
def _unscaled_digits() -> Experiment:
    """Digits' raw 0..16 pixels into a ReLU MLP."""
    s = digits(standardize=False)
    return exp(s, lambda: models.mlp(64, 10, depth=2, width=64), sgd(0.01), steps=150)


@case(
    "unscaled-offset-teacher-lstm",
    family="teacher/rnn",
    expected=("unscaled_inputs",),
    allowed=("bad_init_loss", "stalled_loss", "underfitting", "still_improving", "saturated_units"),
)
def _unscaled_offset() -> Experiment:
    """Teacher features shifted by +50 and read by an LSTM: every input far from zero."""
    s = teacher(features=8, depth=1)
    return exp(
        s,
        lambda: models.rnn(1, s.n_classes, cell="lstm", width=16),
        adam(1e-2),
        steps=100,
        train=(s.X_train + 50, s.y_train),
        val=(s.X_val + 50, s.y_val),
    )


@case(
    "imbalanced-digits-mlp",
    family="digits/mlp",
    expected=("class_imbalance",),
    allowed=("overfitting", "still_improving"),
)
def _imbalanced_digits() -> Experiment:
    """Digits with the most frequent class 30x the rarest."""
    s = digits(imbalance=30.0)
    return exp(
        s, lambda: models.mlp(64, 10, depth=2, width=64, init="he"), sgd(0.05, 0.9), steps=150
    )


@case(
    "imbalanced-mnist1d-cnn",
    family="mnist1d/cnn",
    expected=("class_imbalance",),
    allowed=("overfitting", "still_improving", "underfitting"),
)
def _imbalanced_cnn() -> Experiment:
    """MNIST-1D with the most frequent class 20x the rarest, 1-D CNN."""
    s = mnist1d(flatten=False, imbalance=20.0)
    return exp(
        s, lambda: models.cnn((1, 40), 10, depth=3, width=16, norm="batch"), adam(3e-3), steps=150
    )


@case("overfitting-noisy-labels-mlp-digits", family="digits/mlp", expected=("overfitting",))
def _overfit_mlp() -> Experiment:
    """A wide MLP memorising 300 digits with 40% wrong labels, Adam."""
    s = digits(subset=300, label_noise=0.4)
    return exp(s, lambda: models.mlp(64, 10, depth=2, width=256), adam(3e-3), steps=300)


@case(
    "overfitting-small-mnist1d-cnn",
    family="mnist1d/cnn",
    expected=("overfitting",),
    allowed=("still_improving",),
)
def _overfit_cnn() -> Experiment:
    """A 1-D CNN on 200 MNIST-1D samples with 30% wrong labels, Adam."""
    s = mnist1d(flatten=False, subset=200, label_noise=0.3)
    return exp(s, lambda: models.cnn((1, 40), 10, depth=2, width=32), adam(3e-3), steps=300)


@case(
    "underfitting-linear-spirals",
    family="spirals/mlp",
    expected=("underfitting",),
    allowed=("stalled_loss",),
)
def _underfit_linear() -> Experiment:
    """A linear model on spirals: converged, and wrong on much of the data."""
    s = spirals()
    return exp(s, lambda: models.mlp(2, 3, depth=0), adam(3e-2), steps=200)


@case(
    "underfitting-tiny-gru-teacher-seq",
    family="teacher/rnn",
    expected=("underfitting",),
    allowed=("stalled_loss",),
)
def _underfit_rnn() -> Experiment:
    """A GRU with 2 hidden units on an 8-class teacher task read as an 8-step sequence."""
    s = teacher(features=8, depth=3, classes=8)
    return exp(s, lambda: models.rnn(1, s.n_classes, cell="gru", width=2), adam(3e-2), steps=200)


@case("still-improving-slow-sgd-mlp-digits", family="digits/mlp", expected=("still_improving",))
def _still_mlp() -> Experiment:
    """A sound MLP with plain SGD at lr 0.01 stopped after 100 steps."""
    s = digits()
    return exp(s, lambda: models.mlp(64, 10, depth=2, width=64, init="he"), sgd(0.01), steps=100)


@case("still-improving-short-lstm-spirals-seq", family="spirals/rnn", expected=("still_improving",))
def _still_lstm() -> Experiment:
    """The healthy spirals LSTM setup stopped after 40 steps, a fifth of what it needs."""
    s = spirals(turns=0.5)
    return exp(s, lambda: models.rnn(1, s.n_classes, cell="lstm", width=32), adam(1e-2), steps=40)


class Log(nn.Module):
    """A "log features" step applied to standardised data: log of a negative is NaN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


@case("nonfinite-log-of-negative-cnn-digits", family="digits/cnn", expected=("nonfinite",))
def _nonfinite_log() -> Experiment:
    """A CNN whose first module takes the log of standardised pixels: NaN at step 0."""
    s = digits(flatten=False)
    return exp(
        s,
        lambda: nn.Sequential(Log(), models.cnn((1, 8, 8), 10, depth=2, width=8)),
        sgd(0.05),
        steps=100,
    )


@case("nonfinite-adam-eps0-mlp-digits", family="digits/mlp", expected=("nonfinite",))
def _nonfinite_adam() -> Experiment:
    """Adam with eps=0: digits' blank border pixels give exactly zero gradients, 0/0 = NaN."""
    s = digits()
    return exp(
        s,
        lambda: models.mlp(64, 10, depth=2, width=64, init="he"),
        lambda p: torch.optim.Adam(p, lr=1e-3, eps=0.0),
        steps=100,
    )


# -- running the suite ----------------------------------------------------------------------


@dataclass
class CaseResult:
    case: Case
    raised: frozenset[str]  # kinds at warning or critical
    noted: frozenset[str]  # kinds at info only
    crashed: str | None = None  # the exception that stopped the case, if one did
    seed: int | None = None  # the seed it ran with (None: unknown, the build crashed)
    seconds: float = 0.0

    @property
    def missed(self) -> frozenset[str]:
        return self.case.expected - self.raised

    @property
    def false_alarms(self) -> frozenset[str]:
        return self.raised - self.case.expected - self.case.allowed

    @property
    def ok(self) -> bool:
        return not self.crashed and not self.missed and not self.false_alarms


def run_case(c: Case, seed: int | None = None) -> CaseResult:
    """Diagnose one case, at ``seed`` or (None) the case's own. An exception is recorded in
    ``crashed`` (a case that crashed raised nothing, so its expected kinds count as missed)."""
    from deepdoctor.diagnose import diagnose_experiment

    torch.set_num_threads(1)  # the suite's budgets assume one core; results do not depend on it
    started = time.perf_counter()
    ran_with = seed
    try:
        experiment = c.build()
        ran_with = experiment.seed if seed is None else seed
        diag = diagnose_experiment(experiment, seed=seed)
    except Exception as error:
        return CaseResult(
            c, frozenset(), frozenset(), crash(error), ran_with, time.perf_counter() - started
        )
    raised = frozenset(f.kind for f in diag.findings if f.is_problem)
    noted = frozenset(f.kind for f in diag.findings if not f.is_problem) - raised
    return CaseResult(c, raised, noted, None, ran_with, time.perf_counter() - started)


_RUNS: dict[tuple[str, int], CaseResult] = {}


def run_case_once(c: Case, seed: int) -> CaseResult:
    """``run_case`` at ``seed``, remembered for the process: the suite's calibration test
    (seed 0) and its held-out test (seeds 0-2) share the seed-0 runs instead of diagnosing
    them twice. A run is seeded and deterministic, so the order does not matter."""
    key = (c.name, seed)
    if key not in _RUNS:
        _RUNS[key] = run_case(c, seed=seed)
    return _RUNS[key]


def crash(error: Exception) -> str:
    """``Type: message (at file:line in function)``, the innermost frame."""
    where = traceback.extract_tb(error.__traceback__)[-1]
    return (
        f"{type(error).__name__}: {error} "
        f"(at {Path(where.filename).name}:{where.lineno} in {where.name})"
    )


def describe(r: CaseResult) -> str:
    """One line of progress: the verdict, the case, its seed and time, what it raised."""
    verdict = "CRASH" if r.crashed else "ok   " if r.ok else "BAD  "
    found = r.crashed or f"raised {sorted(r.raised)}  info {sorted(r.noted)}"
    return f"{verdict} {r.case.name:48s} seed {r.seed}  {r.seconds:5.1f}s  {found}"


def confusion(results: list[CaseResult]) -> dict[str, dict[str, int]]:
    """Per kind: cases that expected and found it, expected and missed it, raised it where it
    was neither expected nor allowed (false alarms), and raised it where allowed."""
    from deepdoctor.findings import KINDS

    table = {
        k: {"expected": 0, "found": 0, "missed": 0, "false_alarm": 0, "allowed": 0} for k in KINDS
    }
    for r in results:
        for k in r.case.expected:
            table[k]["expected"] += 1
            table[k]["found" if k in r.raised else "missed"] += 1
        for k in r.false_alarms:
            table[k]["false_alarm"] += 1
        for k in (r.raised & r.case.allowed) - r.case.expected:
            table[k]["allowed"] += 1
    return table


def format_confusion(results: list[CaseResult]) -> str:
    table = confusion(results)
    healthy = [r for r in results if r.case.healthy]
    lines = [
        f"{'kind':22s} {'expected':>8s} {'found':>6s} {'missed':>6s} {'false alarm':>11s} "
        f"{'allowed extra':>13s}"
    ]
    for kind, row in table.items():
        lines.append(
            f"{kind:22s} {row['expected']:8d} {row['found']:6d} {row['missed']:6d} "
            f"{row['false_alarm']:11d} {row['allowed']:13d}"
        )
    clean = sum(1 for r in healthy if not r.raised and not r.crashed)
    lines.append(f"healthy cases with no warning or critical finding: {clean} / {len(healthy)}")
    for r in results:
        if r.crashed:
            lines.append(f"  {r.case.name}: crashed: {r.crashed}")
        elif not r.ok:
            lines.append(
                f"  {r.case.name}: missed {sorted(r.missed)}, false alarms {sorted(r.false_alarms)}"
            )
    return "\n".join(lines)


# The later families (data with a Bayes error, regression, full / tiny batches, functional
# activations, a ResNet, Hugging Face BERT / GPT-2; fine-tuning) register themselves on import.
from . import families, finetune  # noqa: E402, F401

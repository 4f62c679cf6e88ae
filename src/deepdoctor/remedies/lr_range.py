"""A learning-rate range test (Smith, "Cyclical learning rates for training neural networks").

A fresh model from the experiment's builder trains with the experiment's optimizer (its class
and settings), the learning rate swept exponentially from ``MIN_LR`` to ``MAX_LR`` over
``RANGE_STEPS`` steps of the training data, seeded as the experiment, so the test is
deterministic and never touches a model the experiment trains. The loss is smoothed, and the
test stops once the smoothed loss exceeds ``DIVERGE_FACTOR`` x its best (fastai's rule), or
goes NaN.

The suggested rate is the one at the minimum of the smoothed loss, divided by 10 (fastai's
``lr_min``). It was chosen over the steepest-slope rule (torch-lr-finder, fastai's
``steep``) because, on a short noisy sweep, the slope is a difference of noisy points and
jumps between decades, while the minimum is a single robust landmark; and a tenth of the
rate where the loss turns up is Smith's own advice for a constant rate.

The range is absolute, not relative to the current rate: a rate can be wrong by orders of
magnitude either way (50 where 0.01 trains), and a sweep that stopped at 10x the current
rate could never propose a larger raise. 1e-6 to 10 spans the rates that train SGD, Adam and
RMSprop (fastai's ``lr_find`` sweeps 1e-7 to 10). With several parameter groups, every
group's rate is scaled together and the first group's is the one swept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..experiment import Experiment
from ..training import TrainState, make_optimizer, train

MIN_LR, MAX_LR = 1e-6, 10.0  # absolute, fastai's lr_find span (from 1e-7) trimmed a decade
RANGE_STEPS = 100  # fastai's and torch-lr-finder's default: ~14 steps a decade over 7 decades
# ... but no more than a third of the experiment's own run (a test that costs more than the
# run it tunes crowds the other remedies out of treat's budget), and no fewer than 50 steps
# (7 a decade).
MIN_RANGE_STEPS = 50


def range_steps(exp: Experiment) -> int:
    """The steps a range test on ``exp`` takes at most."""
    return max(MIN_RANGE_STEPS, min(RANGE_STEPS, exp.steps // 3))


SMOOTHING = 0.9  # EMA of the loss; lags ~9 steps (0.6 decade), fastai's 0.98 lags 3.5 decades
DIVERGE_FACTOR = 4.0  # fastai: stop once the smoothed loss exceeds 4x its best
SKIP_START = 10  # the first steps' smoothed loss is mostly the initial loss: no minimum there
SUGGEST_DIVISOR = 10.0  # fastai's lr_min: a tenth of the rate at the minimum


@dataclass
class RangeTest:
    """What a range test measured: each step's rate and the (smoothed) loss that followed."""

    base_lr: float  # the experiment's own rate (first parameter group)
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    steps: int = 0  # optimizer steps taken: the compute the test cost
    stopped: str = "completed"

    @property
    def suggestion(self) -> float | None:
        """A tenth of the rate at the smoothed loss's minimum; None when the loss never fell
        below its start (no rate in the range helped) or the test was too short to tell."""
        finite = [(s, i) for i, s in enumerate(self.smoothed) if math.isfinite(s)]
        if len(finite) <= SKIP_START:
            return None
        best, at = min(finite[SKIP_START:])
        if not best < self.smoothed[0]:
            return None
        return self.lrs[at] / SUGGEST_DIVISOR


class _Sweep:
    """The training-loop callback that sets each step's rate and stops at divergence."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.base: list[float] = []
        self.smoothed: list[float] = []
        self.average, self.best = 0.0, math.inf

    def rate(self, step: int) -> float:
        return MIN_LR * (MAX_LR / MIN_LR) ** (step / max(1, self.steps - 1))

    def on_train_start(self, state: TrainState) -> None:
        self.base = [g["lr"] for g in state.optimizer.param_groups]

    def on_after_backward(self, state: TrainState) -> None:
        scale = self.rate(state.step) / self.base[0]
        for g, base in zip(state.optimizer.param_groups, self.base, strict=True):
            g["lr"] = base * scale

    def on_step_end(self, state: TrainState) -> None:
        assert state.loss is not None  # set by the step that just ended
        n = len(self.smoothed) + 1
        self.average = SMOOTHING * self.average + (1 - SMOOTHING) * float(state.loss.detach())
        smoothed = self.average / (1 - SMOOTHING**n)  # debiased, as fastai's
        self.smoothed.append(smoothed)
        self.best = min(self.best, smoothed)
        if smoothed > DIVERGE_FACTOR * self.best:
            state.stop = "diverged"


def range_test(exp: Experiment, steps: int = RANGE_STEPS) -> RangeTest:
    """Sweep the rate over ``steps`` steps of a fresh model; the experiment is not changed.

    >>> import deepdoctor as dd
    >>> split = dd.data.load("digits")
    >>> exp = dd.Experiment(lambda: dd.models.mlp(64, 10, depth=2), split.train, n_classes=10)
    >>> test = range_test(exp)
    >>> 1e-4 < test.suggestion < 10 and test.steps <= 100
    True
    """
    model = exp.build()
    base = make_optimizer(exp.optimizer, model).param_groups[0]["lr"]
    result = RangeTest(base_lr=float(base))
    if not (isinstance(base, float | int) and math.isfinite(base) and base > 0):
        return result  # a rate of 0 cannot be scaled: no suggestion
    sweep = _Sweep(steps)
    history = train(
        model,
        exp.train,
        loss_fn=exp.loss_fn,
        optimizer=exp.optimizer,
        steps=steps,
        batch_size=exp.batch_size,
        seed=exp.seed,
        clip_grad=exp.clip_grad,
        eval_every=steps,  # one evaluation at the end, the least the loop does
        callbacks=[sweep],
        augment=exp.augment,
    )
    # The loss a step's rate led to is the next step's: pair rate t with loss t + 1.
    n = max(0, len(sweep.smoothed) - 1)
    result.lrs = history.lr[:n]
    result.losses = history.loss[1 : n + 1]
    result.smoothed = sweep.smoothed[1 : n + 1]
    result.steps = history.steps
    result.stopped = history.stopped
    return result

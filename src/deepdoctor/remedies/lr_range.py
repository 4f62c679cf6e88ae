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

The warmup length (``RangeTest.warmup_steps``) comes from the same test: a linear warmup to
the rate ``lr`` lasts as many steps as the test took to climb from the first rate that moved
its loss (the smoothed loss ``MOVED`` below its start) up to ``lr``, at the test's own pace
(its steps per decade, extrapolated past its end when ``lr`` lies beyond the rates it
reached). The test is the evidence that this model takes that climb at that pace while its
loss falls; rates below the first that moved the loss teach nothing, so the climb is counted
from there. Bounded to ``WARMUP_MIN``-``WARMUP_MAX`` of the run: a warmup shorter than a few
steps is none, and one longer than a quarter of the run spends the run warming up.

A sweep depends on the model, the data, the loop's settings and the optimizer, but not on
the optimizer's rate (the swept rates are absolute): lower_lr, raise_lr and lr_warmup on
the same experiment, and lower_lr's further cuts, read one sweep. Inside
``sharing_sweeps`` (a treat), ``shared_range_test`` reads a sweep that ran already by its
``sweep_key``, and each change records that key
beside the test's ``steps``, so a search charges one sweep once however many remedies read
it (and wherever they ran: a worker process that has not seen the sweep runs its own copy,
which gives the same numbers).

The range is absolute, not relative to the current rate: a rate can be wrong by orders of
magnitude either way (50 where 0.01 trains), and a sweep that stopped at 10x the current
rate could never propose a larger raise. 1e-6 to 10 spans the rates that train SGD, Adam and
RMSprop (fastai's ``lr_find`` sweeps 1e-7 to 10). With several parameter groups, every
group's rate is scaled together and the first group's is the one swept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..experiment import Experiment
from ..training import TrainState, is_loader, make_optimizer, train

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
MOVED = 0.99  # the smoothed loss 1% below its start: the first rate that taught the model
WARMUP_MIN, WARMUP_MAX = 0.02, 0.25  # of the run's steps


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

    def warmup_steps(self, lr: float, run_steps: int) -> int | None:
        """Steps of a linear warmup to ``lr`` for a run of ``run_steps`` (the module docstring
        says why); None when the test's loss never moved or the test was too short to tell."""
        finite = [(s, i) for i, s in enumerate(self.smoothed) if math.isfinite(s)]
        if len(finite) <= SKIP_START or not (lr > 0 and math.isfinite(lr)):
            return None
        start = self.smoothed[0]
        bar = start - (1 - MOVED) * abs(start)  # 1% below the start, for a negative loss too
        moved = next((i for s, i in finite[SKIP_START:] if s < bar), None)
        if moved is None:
            return None
        first, last = self.lrs[0], self.lrs[-1]
        if not (0 < first < last):
            return None
        per_decade = (len(self.lrs) - 1) / math.log10(last / first)
        climb = per_decade * max(0.0, math.log10(lr / self.lrs[moved]))
        low, high = max(1, round(WARMUP_MIN * run_steps)), max(1, round(WARMUP_MAX * run_steps))
        return int(min(high, max(low, round(climb))))


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


# The sweeps of the search running in this process, by key; None outside a search.
_sweeps: dict[str, RangeTest] | None = None


@contextmanager
def sharing_sweeps() -> Iterator[None]:
    """Within this block (one treat's search), remedies that read the same sweep share it."""
    global _sweeps
    outer = _sweeps
    _sweeps = {} if outer is None else outer
    try:
        yield
    finally:
        _sweeps = outer


def sweep_key(exp: Experiment, steps: int) -> str | None:
    """What a sweep of ``exp`` depends on, hashed: the built model (its structure, initial
    weights and which of them train), the training tensors, the loss (its settings and
    buffers: class weights, label smoothing), the loop's settings, and the optimizer's class
    and settings with the rates relative to the first group's and the parameters of each
    group. None for data from a loader (its batches are not hashed), which then gets a sweep
    of its own each time."""
    if is_loader(exp.train):
        return None
    h = hashlib.sha256()
    model = exp.build()
    opt = make_optimizer(exp.optimizer, model)
    base = opt.param_groups[0]["lr"]
    index = {id(p): i for i, p in enumerate(model.parameters())}
    settings = [
        {k: (v / base if k == "lr" and base else v) for k, v in g.items() if k != "params"}
        | {"params": [index.get(id(p), -1) for p in g["params"]]}
        for g in opt.param_groups
    ]
    trains = [p.requires_grad for p in model.parameters()]
    loss = exp.loss_fn
    loss_settings = (
        {k: v for k, v in vars(loss).items() if not k.startswith("_") and k != "training"}
        if isinstance(loss, torch.nn.Module)
        else None
    )
    augment = getattr(exp.augment, "__qualname__", repr(exp.augment))
    parts = [str(model), trains, type(opt).__qualname__, settings, exp.batch_size, exp.seed]
    parts += [exp.clip_grad, steps, repr(loss), loss_settings, augment]
    h.update(repr(parts).encode())
    buffers = list(loss.state_dict().values()) if isinstance(loss, torch.nn.Module) else []
    for tensor in [*model.state_dict().values(), *buffers, *_tensors(exp.train)]:
        h.update(repr((tuple(tensor.shape), str(tensor.dtype))).encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for k in sorted(value, key=str) for t in _tensors(value[k])]
    inner = getattr(value, "args", None), getattr(value, "kwargs", None)  # a batch's Inputs
    return _tensors(list(inner)) if inner != (None, None) else []


def shared_range_test(exp: Experiment, steps: int = RANGE_STEPS) -> tuple[RangeTest, str | None]:
    """``range_test(exp, steps)`` and its ``sweep_key``; inside ``sharing_sweeps``, a sweep
    of the same key that already ran is read again, with this experiment's own ``base_lr``."""
    key = sweep_key(exp, steps)
    if key is None or _sweeps is None:
        return range_test(exp, steps), key
    if key not in _sweeps:
        _sweeps[key] = range_test(exp, steps)
    base = make_optimizer(exp.optimizer, exp.build()).param_groups[0]["lr"]
    return dataclasses.replace(_sweeps[key], base_lr=float(base)), key

"""Optimisation remedies: gradient_clipping, lower_lr, raise_lr, lr_warmup, adam, train_longer.

Settings come from the untreated run's evidence, not from fixed guesses:

- gradient_clipping clips at the 90th percentile of the unclipped gradient norm, as the Deep
  Learning Tuning Playbook advises (clipping then touches only the rare large steps);
- lower_lr and raise_lr take the rate a learning-rate range test suggests (``lr_range``: a
  fresh model, the rate swept from 1e-6 to 10 over at most 100 steps, a tenth of the rate at
  the smoothed loss's minimum) when it lies on their side of the current rate. Otherwise
  lower_lr divides by 10 when the loss diverged or went non-finite, by 3 when it only
  oscillated; raise_lr multiplies so that the median update-to-weight ratio reaches about
  1e-3 per step (Karpathy's rule of thumb), by at least 3 and at most 30. The range test's
  steps are recorded in the change (``steps``), compute the experiment's own run does not
  include. lr_warmup takes its length from the same test (``RangeTest.warmup_steps``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch

from ..experiment import Experiment
from ..training import DEFAULT_LR, WARMUP_FRACTION
from .base import Context, Prescription, Remedy, record_change
from .lr_range import RangeTest, range_steps, shared_range_test

CLIP_PERCENTILE = 90  # the Tuning Playbook's choice: clip only the rare outsized steps
CLIP_OUTLIER = 10.0  # norms beyond 10x the median are a blow-up, not the run's ordinary steps
LOWER_LR_DIVERGED = 10.0  # a diverging run needs an order of magnitude
LOWER_LR_OSCILLATING = 3.0  # an oscillating one, a nudge
NEXT_RATE_DOWN = 10.0  # when the chosen rate still blew up: the next decade down
TARGET_UPDATE_RATIO = 1e-3  # healthy per-step relative weight change
RAISE_LR_MIN, RAISE_LR_MAX = 3.0, 30.0
ADAM_LR = 1e-3  # Adam's customary default, robust across depths
TRAIN_LONGER_FACTOR = 2


OptFactory = Callable[..., torch.optim.Optimizer]


def base_factory(exp: Experiment) -> OptFactory:
    if exp.optimizer is None:
        return functools.partial(torch.optim.SGD, lr=DEFAULT_LR)
    return exp.optimizer  # type: ignore[return-value]


# Optimizers that divide each gradient by a running estimate of its own scale.
ADAPTIVE = (
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
    torch.optim.Adadelta,
)


def is_adaptive(exp: Experiment) -> bool:
    """The experiment's optimizer scales its steps per parameter (Adam, RMSprop, ...)."""
    return isinstance(base_factory(exp)([torch.zeros(1, requires_grad=True)]), ADAPTIVE)


class ScaledLR:
    """An optimizer factory whose rate is ``factor`` times its base factory's (a class, not
    a closure, so a treated experiment pickles for trials in other processes)."""

    def __init__(self, factory: OptFactory, factor: float) -> None:
        self.factory = factory
        self.factor = factor

    def __call__(self, params: object) -> torch.optim.Optimizer:
        opt = self.factory(params)
        for group in opt.param_groups:
            group["lr"] = group["lr"] * self.factor
        opt.defaults["lr"] = opt.defaults.get("lr", 0.0) * self.factor
        return opt


def scale_lr(factory: OptFactory, factor: float) -> OptFactory:
    return ScaledLR(factory, factor)


def _gradient_clipping(exp: Experiment, ctx: Context) -> Experiment:
    norms = ctx.grad_norms[np.isfinite(ctx.grad_norms)] if ctx.grad_norms.size else ctx.grad_norms
    if norms.size == 0:
        raise Prescription(
            "gradient_clipping",
            "no finite gradient norm was recorded to choose "
            "a threshold from; clip with torch.nn.utils.clip_grad_norm_ at 1.0",
        )
    # The playbook's percentile is of a run's ordinary steps. A run that blew up ends with
    # norms millions of times the rest, and its 90th percentile would clip nothing: those
    # outliers (beyond CLIP_OUTLIER x the median) are left out of the percentile.
    typical = norms[norms <= CLIP_OUTLIER * np.median(norms)]
    threshold = float(np.percentile(typical, CLIP_PERCENTILE))
    return record_change(
        exp,
        "gradient_clipping",
        f"torch.nn.utils.clip_grad_norm_(model.parameters(), {threshold:.4g})  # before step()",
        clip_grad=threshold,
    )


def _tested(exp: Experiment, remedy: str) -> tuple[RangeTest, str | None]:
    """The range test of ``exp`` (shared with the other rate remedies) and its sweep key."""
    test, key = shared_range_test(exp, steps=range_steps(exp))
    if not (math.isfinite(test.base_lr) and test.base_lr > 0):
        raise Prescription(
            remedy, f"the optimizer's learning rate is {test.base_lr}; set a positive one"
        )
    return test, key


def _lower_lr(exp: Experiment, ctx: Context) -> Experiment:
    test, key = _tested(exp, "lower_lr")
    suggested = test.suggestion
    cut = NEXT_RATE_DOWN**ctx.lr_cuts
    again = f", /{cut:g} since the run still blew up at that rate" if ctx.lr_cuts else ""
    if suggested is not None and suggested < test.base_lr:
        how = f"from a learning-rate range test{again}"
        return _set_lr(exp, "lower_lr", (test, key), suggested / cut, how)
    diverged = bool(ctx.kinds & {"diverging_loss", "nonfinite", "exploding_gradients"})
    divisor = LOWER_LR_DIVERGED if diverged else LOWER_LR_OSCILLATING
    how = f"/{divisor:g}: {_why(test)}{again}"
    return _set_lr(exp, "lower_lr", (test, key), test.base_lr / divisor / cut, how)


def _raise_lr(exp: Experiment, ctx: Context) -> Experiment:
    test, key = _tested(exp, "raise_lr")
    suggested = test.suggestion
    if suggested is not None and suggested > test.base_lr:
        return _set_lr(exp, "raise_lr", (test, key), suggested, "from a learning-rate range test")
    ratio = ctx.update_ratio
    factor = TARGET_UPDATE_RATIO / ratio if math.isfinite(ratio) and ratio > 0 else RAISE_LR_MIN
    factor = float(min(max(factor, RAISE_LR_MIN), RAISE_LR_MAX))
    how = f"x{factor:.3g}: {_why(test)}"
    return _set_lr(exp, "raise_lr", (test, key), test.base_lr * factor, how)


def _why(test: RangeTest) -> str:
    """Why the range test's rate was not taken, for the change's comment."""
    if test.suggestion is None:
        return "a learning-rate range test found no rate that lowered the loss"
    return f"a learning-rate range test suggested {test.suggestion:.4g}"


def _set_lr(
    exp: Experiment, remedy: str, tested: tuple[RangeTest, str | None], lr: float, how: str
) -> Experiment:
    """The experiment at rate ``lr``."""
    test = tested[0]
    changed = record_change(
        exp,
        remedy,
        f"lr = {lr:.4g}  # was {test.base_lr:.4g}; {how}",
        optimizer=scale_lr(base_factory(exp), lr / test.base_lr),
    )
    return _charged(changed, tested)


def _charged(changed: Experiment, tested: tuple[RangeTest, str | None]) -> Experiment:
    """``changed`` with its last change recording the range test's cost in ``steps`` and
    its sweep key (``range_test``), by which a search charges a shared sweep once."""
    test, key = tested
    *earlier, change = changed.meta["changes"]
    log = [*earlier, {**change, "steps": test.steps, "range_test": key}]
    return changed.replace(meta={**changed.meta, "changes": log})


def _lr_warmup(exp: Experiment, ctx: Context) -> Experiment:
    """A linear warmup to the current rate, as long as the range test says (``lr_range``);
    ``training.WARMUP_FRACTION`` of the run when the test's loss never moved."""
    schedule = "warmup_cosine" if exp.schedule in ("cosine", "warmup_cosine") else "warmup"
    test, key = _tested(exp, "lr_warmup")
    warm = test.warmup_steps(test.base_lr, exp.steps)
    if warm is None:
        warm = max(1, int(WARMUP_FRACTION * exp.steps))
        how = f"{WARMUP_FRACTION:.0%} of the run: {_why(test)}"
    else:
        how = "the climb a learning-rate range test took from the first rate that moved the loss"
    ramp = (
        f"scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: "
        f"min(1.0, (step + 1) / {warm}))  # scheduler.step() after each optimizer.step()"
        if schedule == "warmup"
        else f"# then the cosine decay over the remaining {exp.steps - warm} steps"
    )
    changed = record_change(
        exp,
        "lr_warmup",
        f"# ramp the learning rate linearly from 0 to {test.base_lr:.4g} over the first "
        f"{warm} steps ({how})\n{ramp}",
        schedule=schedule,
        warmup_steps=warm,
    )
    return _charged(changed, (test, key))


def _adam(exp: Experiment, ctx: Context) -> Experiment:
    if exp.optimizer is not None:
        probe = base_factory(exp)([torch.zeros(1, requires_grad=True)])
        if isinstance(probe, torch.optim.Adam | torch.optim.AdamW):
            defaults = torch.optim.Adam([torch.zeros(1, requires_grad=True)]).defaults
            changed = [k for k in ("eps", "betas") if probe.defaults.get(k) != defaults[k]]
            if not changed:
                raise Prescription("adam", "the optimizer is already Adam")
            # An Adam with unusual settings (eps=0 divides 0 by 0) gets Adam's defaults.
            # (The lr is kept: it is the setting the other remedies tune.)
            lr = probe.defaults["lr"]
            return record_change(
                exp,
                "adam",
                f"optimizer = torch.optim.Adam(model.parameters(), lr={lr:.4g})"
                f"  # default {', '.join(changed)}",
                optimizer=functools.partial(torch.optim.Adam, lr=lr),
            )
    return record_change(
        exp,
        "adam",
        f"optimizer = torch.optim.Adam(model.parameters(), lr={ADAM_LR})",
        optimizer=functools.partial(torch.optim.Adam, lr=ADAM_LR),
    )


def _train_longer(exp: Experiment, ctx: Context) -> Experiment:
    steps = exp.steps * TRAIN_LONGER_FACTOR
    return record_change(exp, "train_longer", f"steps = {steps}  # was {exp.steps}", steps=steps)


REMEDIES = [
    Remedy(
        "gradient_clipping",
        "optimization",
        "clip the gradient norm at the 90th percentile of the untreated run's norms",
        _gradient_clipping,
    ),
    Remedy(
        "lower_lr",
        "optimization",
        "lower the learning rate to a range test's suggestion, else divide it by 10 or 3",
        _lower_lr,
        range_steps,
    ),
    Remedy(
        "raise_lr",
        "optimization",
        "raise the learning rate to a range test's suggestion, else so that weights move "
        "~1e-3 of their norm per step",
        _raise_lr,
        range_steps,
    ),
    Remedy(
        "lr_warmup",
        "optimization",
        "warm the learning rate up linearly, for as many steps as a range test's climb "
        "from the first rate that moved the loss",
        _lr_warmup,
        range_steps,
    ),
    Remedy("adam", "optimization", "switch to Adam (lr 1e-3)", _adam),
    Remedy("train_longer", "optimization", "train for twice as many steps", _train_longer),
]

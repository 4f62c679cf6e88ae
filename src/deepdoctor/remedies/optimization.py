"""Optimisation remedies: gradient_clipping, lower_lr, raise_lr, lr_warmup, adam, train_longer.

Settings come from the untreated run's evidence, not from fixed guesses:

- gradient_clipping clips at the 90th percentile of the unclipped gradient norm, as the Deep
  Learning Tuning Playbook advises (clipping then touches only the rare large steps);
- lower_lr divides by 10 when the loss diverged or went non-finite, by 3 when it only
  oscillated;
- raise_lr multiplies so that the median update-to-weight ratio reaches about 1e-3 per step
  (Karpathy's rule of thumb), by at least 3 and at most 30.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..experiment import Experiment
from ..training import DEFAULT_LR
from .base import Context, Prescription, Remedy, record_change

CLIP_PERCENTILE = 90  # the Tuning Playbook's choice: clip only the rare outsized steps
CLIP_OUTLIER = 10.0  # norms beyond 10x the median are a blow-up, not the run's ordinary steps
LOWER_LR_DIVERGED = 10.0  # a diverging run needs an order of magnitude
LOWER_LR_OSCILLATING = 3.0  # an oscillating one, a nudge
TARGET_UPDATE_RATIO = 1e-3  # healthy per-step relative weight change
RAISE_LR_MIN, RAISE_LR_MAX = 3.0, 30.0
ADAM_LR = 1e-3  # Adam's customary default, robust across depths
TRAIN_LONGER_FACTOR = 2


OptFactory = Callable[..., torch.optim.Optimizer]


def base_factory(exp: Experiment) -> OptFactory:
    if exp.optimizer is None:
        return lambda params: torch.optim.SGD(params, lr=DEFAULT_LR)
    return exp.optimizer  # type: ignore[return-value]


def scale_lr(factory: OptFactory, factor: float) -> OptFactory:
    def make(params: object) -> torch.optim.Optimizer:
        opt = factory(params)
        for group in opt.param_groups:
            group["lr"] = group["lr"] * factor
        opt.defaults["lr"] = opt.defaults.get("lr", 0.0) * factor
        return opt

    return make


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


def _lower_lr(exp: Experiment, ctx: Context) -> Experiment:
    diverged = bool(ctx.kinds & {"diverging_loss", "nonfinite", "exploding_gradients"})
    factor = 1 / (LOWER_LR_DIVERGED if diverged else LOWER_LR_OSCILLATING)
    return record_change(
        exp,
        "lower_lr",
        f"lr = {ctx.base_lr * factor:.4g}  # was {ctx.base_lr:.4g}",
        optimizer=scale_lr(base_factory(exp), factor),
    )


def _raise_lr(exp: Experiment, ctx: Context) -> Experiment:
    ratio = ctx.update_ratio
    factor = TARGET_UPDATE_RATIO / ratio if math.isfinite(ratio) and ratio > 0 else RAISE_LR_MIN
    factor = float(min(max(factor, RAISE_LR_MIN), RAISE_LR_MAX))
    return record_change(
        exp,
        "raise_lr",
        f"lr = {ctx.base_lr * factor:.4g}  # was {ctx.base_lr:.4g}",
        optimizer=scale_lr(base_factory(exp), factor),
    )


def _lr_warmup(exp: Experiment, ctx: Context) -> Experiment:
    schedule = "warmup_cosine" if exp.schedule in ("cosine", "warmup_cosine") else "warmup"
    return record_change(
        exp,
        "lr_warmup",
        "# ramp the learning rate linearly from 0 over the first 10% of steps",
        schedule=schedule,
    )


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
                optimizer=lambda params: torch.optim.Adam(params, lr=lr),
            )
    return record_change(
        exp,
        "adam",
        f"optimizer = torch.optim.Adam(model.parameters(), lr={ADAM_LR})",
        optimizer=lambda params: torch.optim.Adam(params, lr=ADAM_LR),
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
        "lower_lr", "optimization", "divide the learning rate by 10 (diverging) or 3", _lower_lr
    ),
    Remedy(
        "raise_lr",
        "optimization",
        "raise the learning rate so weights move ~1e-3 of their norm per step",
        _raise_lr,
    ),
    Remedy(
        "lr_warmup",
        "optimization",
        "warm the learning rate up over the first 10% of steps",
        _lr_warmup,
    ),
    Remedy("adam", "optimization", "switch to Adam (lr 1e-3)", _adam),
    Remedy("train_longer", "optimization", "train for twice as many steps", _train_longer),
]

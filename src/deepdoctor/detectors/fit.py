"""Fit detectors: overfitting, underfitting, still_improving.

They read the evaluations (``trace.evals``: train and validation loss and accuracy); without
them they fall back to the training loss curve where that still says something
(still_improving, underfitting), and stay silent where it cannot (overfitting).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..findings import Finding
from ..trace import Trace
from ._common import eval_series, finite_loss, round_sig, smooth, stopped_early
from .loss import reference_loss

OVERFIT_RISE = 0.25  # validation loss 25% above its best (healthy runs in the suite: < 10%)
OVERFIT_GAP = 0.2  # train accuracy 20 points above validation accuracy
OVERFIT_GAP_INFO = 0.1  # 10 points: a note
# Underfitting against a reference (trace.facts.reference): on train and on validation the
# run made less than 40% of the improvement over chance that the cheap reference made. On the
# calibration suite's tuning half the underfitting cases made at most 7% of it and the nearest
# other plateaued run 75% (train; 66% validation): 0.4 is about midway.
UNDERFIT_SHARE = 0.4
# Without a reference (info only): more than half the chance-level loss still there at the end
UNDERFIT_FRACTION = 0.5
PLATEAU_SHARE = 0.1  # ... and less than 10% of the run's improvement came in its last quarter
IMPROVING_INFO = 0.1  # the last quarter brought 10% of the run's improvement ...
IMPROVING_MIN_DROP = 0.05  # ... and cut the loss by 5% of its level: still falling
IMPROVING_DROP = 0.1  # cut by 10%: clearly falling, another quarter would gain as much
LAST_PART = 0.25  # "the end of the run": its last quarter
# The last quarter's drop must also stand out of the curve's own noise: more than this many
# standard deviations of a difference of two evaluations (the noise estimated from the
# curve's second differences, ``curve_noise``), so a flat but jittery curve is not "falling".
IMPROVING_NOISE_SIGMAS = 3.0
MAD_TO_SIGMA = 1.4826  # a robust standard deviation from a median absolute deviation
MIN_NOISE_POINTS = 5  # second differences need a few points to say anything
MIN_VAL_EVALS = 3  # overfitting needs a best validation loss and later ones to compare
MIN_CURVE_POINTS = 4  # a loss curve of fewer points has no last quarter to read


def _curve(trace: Trace) -> tuple[np.ndarray, np.ndarray, str]:
    """The best loss curve available: validation, else train evaluations, else the steps."""
    for stat in ("val_loss", "train_loss"):
        steps, values = eval_series(trace, stat)
        if len(values) >= MIN_CURVE_POINTS:
            return steps.astype(float), values, stat
    loss = trace.loss()
    keep = np.isfinite(loss)
    if keep.sum() < MIN_CURVE_POINTS:
        return np.zeros(0), np.zeros(0), "none"
    steps = np.asarray(trace.steps.steps, dtype=float)[keep]
    trend = smooth(loss[keep])
    return steps[-len(trend) :], trend, "train_loss (per step)"


def improvement_share(steps: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Share of the run's improvement made in its last quarter, and that quarter's drop
    relative to the loss level at its start."""
    t_end = steps[-1]
    t_q = steps[0] + (1 - LAST_PART) * (t_end - steps[0])
    v_q = float(np.interp(t_q, steps, values))
    start, end = float(values[0]), float(values[-1])
    total = start - end
    share = (v_q - end) / total if total > 0 else 0.0
    rel = (v_q - end) / v_q if v_q > 0 else 0.0
    return share, rel


def curve_noise(values: np.ndarray) -> float:
    """The noise of one point of a loss curve: a robust standard deviation of its second
    differences (whose variance is 6 sigma^2 for independent noise; a smooth curve's own
    bend is nearly constant over a few points and the median takes it out). 0 when too
    short to tell."""
    if len(values) < MIN_NOISE_POINTS:
        return 0.0
    d2 = np.diff(values, n=2)
    return float(MAD_TO_SIGMA * np.median(np.abs(d2 - np.median(d2))) / math.sqrt(6))


def detect(trace: Trace) -> list[Finding]:
    findings = _overfitting(trace)
    steps, values, source = _curve(trace)
    if len(values) == 0 or stopped_early(trace):
        return findings
    share, rel = improvement_share(steps, values)
    noise = curve_noise(values)
    above_noise = _last_quarter_drop(steps, values) > IMPROVING_NOISE_SIGMAS * math.sqrt(2) * noise
    improving = share > IMPROVING_INFO and rel > IMPROVING_MIN_DROP and above_noise
    if improving and not findings:
        findings += _still_improving(share, rel, source, noise)
    if share < PLATEAU_SHARE or not improving:
        findings += _underfitting(trace, share)
    return findings


def _last_quarter_drop(steps: np.ndarray, values: np.ndarray) -> float:
    t_q = steps[0] + (1 - LAST_PART) * (steps[-1] - steps[0])
    return float(np.interp(t_q, steps, values)) - float(values[-1])


def _still_improving(share: float, rel: float, source: str, noise: float) -> list[Finding]:
    severe = rel > IMPROVING_DROP
    return [
        Finding(
            kind="still_improving",
            severity="warning" if severe else "info",
            summary=(
                f"The {source.split(' ')[0].replace('_', ' ')} was still falling when training "
                f"ended ({100 * rel:.0f}% lower over the last quarter of the run): train longer."
            ),
            evidence={
                "last_quarter_share": round_sig(share),
                "threshold": IMPROVING_DROP,
                "last_quarter_drop": round_sig(rel),
                "curve": source,
                "curve_noise": round_sig(noise),
                "noise_sigmas": IMPROVING_NOISE_SIGMAS,
            },
            remedies=["train_longer", "raise_lr"],
        )
    ]


def _overfitting(trace: Trace) -> list[Finding]:
    steps, val = eval_series(trace, "val_loss")
    if len(val) < MIN_VAL_EVALS:
        return []
    _, train = eval_series(trace, "train_loss")
    best = int(np.argmin(val))
    rise = (val[-1] - val[best]) / val[best] if val[best] > 0 else 0.0
    train_fell = len(train) == len(val) and train[-1] < train[best]
    _, tacc = eval_series(trace, "train_accuracy")
    _, vacc = eval_series(trace, "val_accuracy")
    gap = float(tacc[-1] - vacc[-1]) if len(tacc) and len(vacc) else math.nan
    rising = rise > OVERFIT_RISE and train_fell
    if rising or gap > OVERFIT_GAP:
        severity = "warning"
    elif gap > OVERFIT_GAP_INFO:
        severity = "info"
    else:
        return []
    what = (
        f"the validation loss rose {100 * rise:.0f}% above its best (step {int(steps[best])})"
        if rising
        else f"train accuracy is {100 * gap:.0f} points above validation"
    )
    return [
        Finding(
            kind="overfitting",
            severity=severity,
            summary=(
                f"The model memorises the training set: {what} while the training loss kept "
                "falling; stop early, add weight decay or dropout, or get more data."
            ),
            evidence={
                "val_loss_rise": round_sig(rise),
                "threshold_rise": OVERFIT_RISE,
                "best_step": int(steps[best]),
                "accuracy_gap": round_sig(gap),
                "threshold_gap": OVERFIT_GAP,
                "val_loss_best": round_sig(float(val[best])),
                "val_loss_end": round_sig(float(val[-1])),
            },
            remedies=[
                "early_stopping",
                "weight_decay",
                "dropout",
                "data_augmentation",
                "less_capacity",
            ],
        )
    ]


def _underfitting(trace: Trace, share: float) -> list[Finding]:
    ref, what = reference_loss(trace), "a chance-level"
    if ref is None:
        var = trace.facts.target_var
        ref, what = (
            (float(var), "the target variance")
            if isinstance(var, int | float) and var > 0
            else (None, "")
        )
    if ref is None:
        loss = finite_loss(trace)
        ref, what = (float(np.median(loss[:3])), "the starting loss") if len(loss) else (None, "")
    if ref is None:
        return []
    _, train = eval_series(trace, "train_loss")
    _, val = eval_series(trace, "val_loss")
    end = float(train[-1]) if len(train) else float(np.median(finite_loss(trace)[-3:]))
    val_end = float(val[-1]) if len(val) else math.nan
    fitted = trace.facts.reference or {}
    if isinstance(fitted.get("val_loss"), int | float):
        return _below_reference(trace, fitted, ref, what, end, val_end, share)
    if not end > UNDERFIT_FRACTION * ref:
        return []
    why = fitted.get("skipped") or "none was fitted (diagnose fits one)"
    return [
        Finding(
            kind="underfitting",
            severity="info",
            summary=(
                f"Training ended on a plateau with the training loss at {end:.3g}, "
                f"{100 * end / ref:.0f}% of {what} {ref:.3g}; without a reference model to "
                "say what the data allows, this may be the data's own noise, or too little "
                "capacity."
            ),
            evidence={
                "train_loss": round_sig(end),
                "val_loss": round_sig(val_end),
                "reference_loss": round_sig(ref),
                "fraction": round_sig(end / ref),
                "threshold": UNDERFIT_FRACTION,
                "last_quarter_share": round_sig(share),
                "reference": f"no reference: {why}",
                "train_metrics": trace.facts.train_metrics,
            },
            remedies=["more_capacity", "adam", "raise_lr", "train_longer"],
        )
    ]


def _below_reference(
    trace: Trace,
    fitted: dict[str, Any],
    chance: float,
    what: str,
    end: float,
    val_end: float,
    share: float,
) -> list[Finding]:
    """Underfitting against what a cheap model reached: the share of the reference's
    improvement over chance that the run made, on train and on validation."""
    best = float(fitted["val_loss"])
    gain = chance - best
    if not gain > 0:  # the reference does no better than chance: no yardstick
        return []
    made = (chance - end) / gain
    made_val = (chance - val_end) / gain if math.isfinite(val_end) else math.nan
    if not made < UNDERFIT_SHARE or made_val >= UNDERFIT_SHARE:
        return []
    worst = made if math.isnan(made_val) else max(made, made_val)
    return [
        Finding(
            kind="underfitting",
            severity="warning",
            summary=(
                f"Training ended on a plateau with the training loss at {end:.3g}, where a "
                f"{fitted.get('model')} model on the same data reaches {best:.3g} (from "
                f"{what} {chance:.3g}): the run made {100 * max(worst, 0):.0f}% of that gain; "
                "give it more capacity or a better optimizer."
            ),
            evidence={
                "train_loss": round_sig(end),
                "val_loss": round_sig(val_end),
                "reference_loss": round_sig(best),
                "reference_model": fitted.get("model"),
                "reference_accuracy": fitted.get("val_accuracy"),
                "chance_loss": round_sig(chance),
                "share_of_reference_gain": round_sig(made),
                "val_share_of_reference_gain": round_sig(made_val),
                "threshold": UNDERFIT_SHARE,
                "last_quarter_share": round_sig(share),
                "train_metrics": trace.facts.train_metrics,
            },
            remedies=["more_capacity", "adam", "raise_lr", "train_longer"],
        )
    ]

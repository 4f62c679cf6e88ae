"""Loss detectors: nonfinite, diverging_loss, oscillating_loss, stalled_loss, bad_init_loss.

They read the per-step training loss (``probe.record_loss``); a trace without it gets no loss
finding rather than a guess. Levels are compared through medians over windows of steps
(``_common.window``), so one unlucky mini-batch never decides anything.
"""

from __future__ import annotations

import math

import numpy as np

from ..findings import Finding
from ..trace import Trace
from ..wording import rounded
from ._common import (
    eval_series,
    finite_loss,
    loss_start_end,
    nanmedian,
    relative_drop,
    round_sig,
    smooth,
    stopped_early,
)

BLOWUP_FACTOR = 20.0  # a loss 20x its start has no way back in a short run: stop, critical
# A loss that reached 10x its start blew up, even when it came back down: a logistic
# regression at SGD lr 100 peaks at 15x within two steps, then swings between 0 and 10. In the
# suite at seeds 0-2 the runs not labelled diverging peak at 3.3x their first step's loss at
# most (1.6x healthy; 15x for a momentum-0.99 CNN that is allowed to diverge).
DIVERGE_PEAK = 10.0
DIVERGE_RATIO = 1.25  # ending 25% above the start: the run made the model worse
DIVERGE_FROM_MIN = 2.0  # ... or ending at twice its lowest (smoothed) level
DIVERGE_MIN_RISE = 0.1  # ... a rise of at least 10% of the starting loss (not noise at ~0)
# Oscillation, in units of the starting loss over the second half of the run (see
# ``oscillation``). Healthy runs in the suite: step-to-step swing up to 0.08 (noisy labels,
# batches of 64), up-and-down travel of the running median up to 0.16 while still falling.
OSCILLATION_SWING = 0.15
OSCILLATION_TRAVEL = 0.2  # ... counted only when the running median is not settling:
SETTLING = 0.05  # it fell by less than 5% of the starting loss over the second half
# Oscillation on the noise-free curve: the training loss evaluated on a fixed subset at the
# evaluations (no mini-batch noise). Its upward travel over the run, in units of the starting
# loss, above 0.35, and a way down of at least 0.1 too (not a one-way climb). Chosen on the
# tuning half of the suite at seeds 0-2: oscillating cases 0.48-2.35, every other case at most
# 0.26 (a healthy tanh MLP on spirals, Adam); held-out: oscillating 1.29-3.02, others <= 0.10.
OSCILLATION_UP = 0.35
OSCILLATION_DOWN = 0.1
MIN_EVALS = 4  # fewer evaluations than this: no curve to judge, the per-step rule at info
STALL_DROP = 0.05  # the loss fell by less than 5% of its start over the whole run
CRAWL_DROP = 0.2  # ... or by less than 20% while ...
CRAWL_UPDATE = 1e-4  # ... the weights moved less than 1e-4 of their norm per step (the
#                      rule of thumb for a healthy SGD step is ~1e-3), in every layer
MIN_STEPS = 10  # fewer recorded steps than this: too short to judge a curve
BAD_INIT_RATIO = 3.0  # step-0 loss over ln(classes): 3x means confidently wrong logits
BAD_INIT_INFO = 1.5  # 1.5x: logits larger than a calibrated start, worth a note
# Regression: step-0 MSE over the targets' variance (predicting their mean). Above 4 the
# outputs spread twice the targets' scale; a default-initialised net starts near 1.
BAD_INIT_MSE_RATIO = 4.0
LOWER_LR_FIRST = ["lower_lr", "gradient_clipping", "lr_warmup"]


def detect(trace: Trace) -> list[Finding]:
    findings = _nonfinite(trace) or _skipped_by_scaler(trace)
    loss = finite_loss(trace)
    if len(loss) == 0:
        return findings
    diverging = _diverging(trace, loss)
    findings += diverging
    findings += _bad_init(trace)
    if len(loss) >= MIN_STEPS:
        findings += _oscillating(trace, loss)
        if not diverging:
            findings += _stalled(trace, loss)
    return findings


# -- nonfinite ----------------------------------------------------------------------------


def _first_flag(trace: Trace) -> tuple[int | None, list[str]]:
    """First step with a non-finite loss, gradient or weight, and which of them."""
    if len(trace.steps) == 0:
        return None, []
    flags = {
        what: trace.steps.array(f"nonfinite_{what}")[:, 0] > 0
        for what in ("loss", "grad", "weight")
    }
    bad = np.flatnonzero(np.any(np.stack(list(flags.values())), axis=0))
    if len(bad) == 0:
        return None, []
    i = int(bad[0])
    return int(trace.steps.steps[i]), [w for w, f in flags.items() if f[i]]


def _first_layer(trace: Trace, step: int | None) -> str | None:
    """The first module (forward order) whose output, gradient or weights went non-finite."""
    if len(trace.acts):
        acts = trace.acts.array("nonfinite")
        rows = np.flatnonzero(np.nan_to_num(acts, nan=0.0).max(axis=1) > 0)
        if len(rows):
            return trace.act_layers[int(np.argmax(acts[rows[0]] > 0))]
    if step is not None and step in trace.layer.steps:
        i = trace.layer.steps.index(step)
        for stat in ("weight_norm", "grad_norm_weight", "grad_norm_bias"):
            row = trace.layer.array(stat)[i]
            bad = np.flatnonzero(np.isinf(row) | (np.isnan(row) & (stat == "weight_norm")))
            if len(bad):
                return trace.layers[int(bad[0])]
    return None


def _nonfinite(trace: Trace) -> list[Finding]:
    at = dict(trace.facts.nonfinite_at or {})
    step, what = _first_flag(trace)
    if not at and step is None:
        return []
    if at:
        step = at.get("step", step)
        what = what or ["loss"]
    layer = at.get("first_nonfinite_module") or _first_layer(trace, step)
    weights = list(at.get("nonfinite_weights") or [])
    where = f", first in {layer}" if layer else ""
    return [
        Finding(
            kind="nonfinite",
            severity="critical",
            summary=(
                f"The {' and '.join(what)} became NaN or Inf at step {step}{where}: lower the "
                "learning rate or clip the gradient, and check that module's inputs."
            ),
            layers=[layer] if layer else weights,
            evidence={
                "step": step,
                "first_module": layer,
                "nonfinite": what,
                "nonfinite_weights": weights,
            },
            remedies=_nonfinite_remedies(trace, step, what),
        )
    ]


# A healthy fp16 run skips a handful of steps while GradScaler's scale (65536 at the start)
# halves down to its level, then about one per growth interval (2,000 steps) when it tries a
# doubling: a tenth of the steps skipped means the gradients overflow again and again.
SKIPPED_FRACTION = 0.1
MIN_SKIPPED = 5  # ... and at least this many, so the first halvings of a short run do not count
# A scale below 1 shrinks the gradients yet they still overflow fp16: the model's own
# gradients are Inf, and the small ones underflow to zero at that scale.
COLLAPSED_SCALE = 1.0


def _skipped_by_scaler(trace: Trace) -> list[Finding]:
    facts = trace.facts
    skipped, low = facts.skipped_steps or 0, facts.loss_scale_min
    attempted = trace.n_steps + skipped
    collapsed = low is not None and low < COLLAPSED_SCALE
    if not collapsed and (skipped < MIN_SKIPPED or skipped < SKIPPED_FRACTION * attempted):
        return []
    return [
        Finding(
            kind="nonfinite",
            severity="critical" if collapsed else "warning",
            summary=(
                f"The loss scaler skipped {skipped} of {attempted} steps for Inf or NaN "
                f"gradients and its scale fell from {facts.loss_scale_start:.3g} to "
                f"{low:.3g}: the fp16 gradients overflow"
                + (" even unscaled, and small ones underflow to zero" if collapsed else "")
                + "; clip the gradient or lower the learning rate."
            ),
            evidence={
                "skipped_steps": skipped,
                "attempted_steps": attempted,
                "loss_scale_start": facts.loss_scale_start,
                "loss_scale_min": low,
                "threshold": SKIPPED_FRACTION,
            },
            remedies=["gradient_clipping", "lower_lr", "lr_warmup"],
        )
    ]


def _nonfinite_remedies(trace: Trace, step: int | None, what: list[str]) -> list[str]:
    """A loss that is already NaN at step 0 comes from the forward pass at initialisation,
    which no optimizer setting reaches: inputs, initialisation and normalisation first.
    Later, the update made it: a lower rate, clipping, warmup; and Adam with its default
    settings replaces an optimizer misconfigured into NaN (Adam with eps=0 divides 0 by 0 on
    a parameter that never gets a gradient)."""
    if step == 0 and "loss" in what:
        at_init = ["xavier_init", "batch_norm", "layer_norm"]
        if _inputs_unscaled(trace):
            return ["standardize_inputs", *at_init]
        return [*at_init, "standardize_inputs"]
    return [*LOWER_LR_FIRST, "adam"]


# -- the shape of the loss curve ---------------------------------------------------------------


def _blowup_factor(trace: Trace) -> float:
    factor = trace.facts.blowup_factor
    return float(factor) if isinstance(factor, int | float) else BLOWUP_FACTOR


def _diverging(trace: Trace, loss: np.ndarray) -> list[Finding]:
    start = float(np.median(loss[: min(3, len(loss))]))
    peak = float(loss.max())
    factor = min(_blowup_factor(trace), DIVERGE_PEAK)
    # Against the loss at initialisation: a blow-up within the first steps would lift a
    # median of them (the logistic regression above: 0.68, 1.95, 10.3).
    start = min(start, float(loss[0]))
    if trace.facts.stop_reason == "loss_blowup" or (start > 0 and peak > factor * start):
        step = int(
            trace.steps.steps[
                int(np.nanargmax(np.where(np.isfinite(trace.loss()), trace.loss(), -np.inf)))
            ]
        )
        # a run stopped for a blow-up may start at a loss of 0 or below (a hand-built trace)
        ratio = peak / start if start > 0 else math.inf
        return [
            Finding(
                kind="diverging_loss",
                severity="critical",
                summary=(
                    f"The loss blew up to {rounded(peak)} ({rounded(ratio)}x its start) by step "
                    f"{step}: lower the learning rate (by 10x) or clip the gradient."
                ),
                evidence={
                    "start_loss": round_sig(start),
                    "peak_loss": round_sig(peak),
                    "ratio": round_sig(ratio),
                    "threshold": factor,
                    "step": step,
                },
                remedies=LOWER_LR_FIRST,
            )
        ]
    if len(loss) < MIN_STEPS:
        return []
    first, end = loss_start_end(loss)
    trend = smooth(loss)
    low = float(trend.min())
    rose_from_start = end > DIVERGE_RATIO * first
    rose_from_min = end > DIVERGE_FROM_MIN * low and end - low > DIVERGE_MIN_RISE * first
    if not (rose_from_start or rose_from_min):
        return []
    return [
        Finding(
            kind="diverging_loss",
            severity="warning",
            summary=(
                f"The loss rose to {end:.3g} at the end from a low of {low:.3g} (start "
                f"{first:.3g}): the learning rate is too high for this stage; lower it or "
                "add a warmup."
            ),
            evidence={
                "start_loss": round_sig(first),
                "min_loss": round_sig(low),
                "end_loss": round_sig(end),
                "ratio_to_start": round_sig(end / first),
                "ratio_to_min": round_sig(end / low) if low > 0 else math.inf,
                "threshold_start": DIVERGE_RATIO,
                "threshold_min": DIVERGE_FROM_MIN,
            },
            remedies=LOWER_LR_FIRST,
        )
    ]


def oscillation(loss: np.ndarray) -> dict[str, float]:
    """How the loss swings over the second half of the run, in units of its starting value.

    ``swing``: robust spread of the step-to-step loss around its running median (fast
    swings). ``travel``: how far the running median went up and down beyond its net change
    (slow swings, e.g. from heavy momentum). ``settling``: how much the running median fell
    over the second half. Measured against the starting loss, not the current level, so the
    relative noise of a loss that has almost reached zero does not count.
    """
    start = float(np.median(loss[: min(3, len(loss))]))
    trend = smooth(loss)
    half = loss[len(loss) // 2 :]
    trend_half = trend[len(trend) // 2 :]
    aligned = trend[-len(half) :] if len(trend) >= len(half) else np.full_like(half, half.mean())
    swing = float(np.median(np.abs(half - aligned))) * 1.4826  # robust std of the residual
    travel = float(np.abs(np.diff(trend_half)).sum() - abs(trend_half[-1] - trend_half[0]))
    settling = float(trend_half[0] - trend_half[-1])
    if start <= 0:
        return {"swing": math.nan, "travel": math.nan, "settling": math.nan}
    return {"swing": swing / start, "travel": travel / (2 * start), "settling": settling / start}


def eval_travel(trace: Trace) -> dict[str, float] | None:
    """How far the noise-free training loss (evaluated on a fixed subset) went up and down
    over the run, in units of the starting loss; None without enough evaluations."""
    _, curve = eval_series(trace, "train_loss")
    if len(curve) < MIN_EVALS:
        return None
    loss = finite_loss(trace)
    start = float(np.median(loss[: min(3, len(loss))])) if len(loss) else float(curve[0])
    if not start > 0:
        return None
    steps = np.diff(curve)
    return {
        "up": float(steps[steps > 0].sum()) / start,
        "down": float(-steps[steps < 0].sum()) / start,
        "evaluations": float(len(curve)),
    }


def _oscillating(trace: Trace, loss: np.ndarray) -> list[Finding]:
    """Judged on the noise-free curve when the run was evaluated; a loss that only swings
    from mini-batch to mini-batch is batch noise, not oscillation. Without evaluations the
    per-step swing is the only evidence, and it is reported at info."""
    osc = oscillation(loss)
    travel = eval_travel(trace)
    evidence: dict[str, float | str] = {
        "swing": round_sig(osc["swing"]),
        "threshold_swing": OSCILLATION_SWING,
        "travel": round_sig(osc["travel"]),
        "settling": round_sig(osc["settling"]),
    }
    if travel is not None:
        if not (travel["up"] > OSCILLATION_UP and travel["down"] > OSCILLATION_DOWN):
            return []
        severity, size, how = "warning", travel["up"], "up and down between evaluations"
        evidence.update(
            up_travel=round_sig(travel["up"]),
            down_travel=round_sig(travel["down"]),
            threshold=OSCILLATION_UP,
            curve="train_loss on a fixed training subset (no batch noise)",
        )
    else:
        fast = osc["swing"] > OSCILLATION_SWING
        slow = osc["travel"] > OSCILLATION_TRAVEL and osc["settling"] < SETTLING
        if not (fast or slow):
            return []
        severity, size = "info", osc["swing"] if fast else osc["travel"]
        how = "from step to step (without evaluations, batch noise cannot be told apart)"
        evidence.update(threshold=OSCILLATION_SWING, curve="per-step loss")
    return [
        Finding(
            kind="oscillating_loss",
            severity=severity,
            summary=(
                f"The loss swings by {size:.2g}x its starting value {how} without settling: "
                "lower the learning rate (or the momentum), or add a decay."
            ),
            evidence=evidence,
            remedies=["lower_lr", "lr_warmup", "gradient_clipping", "adam"],
        )
    ]


def _stalled(trace: Trace, loss: np.ndarray) -> list[Finding]:
    if stopped_early(trace) and trace.facts.stop_reason != "early_stopping":
        return []
    drop = relative_drop(loss)
    # The fastest-moving layer's typical update: if even it crawls, the learning rate is small
    # (vanishing gradients instead leave the early layers still and the last ones moving).
    update = (
        float(np.nanmax(nanmedian(trace.updates.array("update_ratio"), axis=0)))
        if len(trace.updates) and np.isfinite(trace.updates.array("update_ratio")).any()
        else math.nan
    )
    crawling = drop < CRAWL_DROP and update < CRAWL_UPDATE
    if not (drop < STALL_DROP or crawling):
        return []
    start, end = loss_start_end(loss)
    small_steps = update < CRAWL_UPDATE
    return [
        Finding(
            kind="stalled_loss",
            severity="warning",
            summary=(
                f"The loss hardly moved ({start:.3g} -> {end:.3g}, {100 * drop:.1f}% lower)"
                + (
                    f" with weights changing by only {update:.1g} of their size per step: "
                    "raise the learning rate or switch to Adam."
                    if small_steps
                    else ": the signal is not getting through; see the gradient and activation "
                    "findings, or switch to Adam."
                )
            ),
            evidence={
                "start_loss": round_sig(start),
                "end_loss": round_sig(end),
                "relative_drop": round_sig(drop),
                "threshold": STALL_DROP,
                "update_ratio": round_sig(update),
                "threshold_update": CRAWL_UPDATE,
            },
            remedies=(
                ["raise_lr", "adam", "lr_warmup"]
                if small_steps
                else ["adam", "batch_norm", "he_init", "raise_lr"]
            ),
        )
    ]


def reference_loss(trace: Trace) -> float | None:
    """The loss of a calibrated start: ln(classes) for classification, None if unknown."""
    k = trace.facts.n_classes
    task = trace.facts.task or "classification"
    if task in ("classification", "binary") and isinstance(k, int) and k >= 2:
        return math.log(k)
    return None


def _bad_init(trace: Trace) -> list[Finding]:
    loss = trace.loss()
    if len(loss) == 0 or not math.isfinite(loss[0]):
        return []
    if trace.facts.task == "regression":
        return _bad_init_regression(trace, float(loss[0]))
    ref = reference_loss(trace)
    if ref is None:
        return []
    first = float(loss[0])
    ratio = first / ref
    if not ratio > BAD_INIT_INFO:
        return []
    severe = ratio > BAD_INIT_RATIO
    unscaled = _inputs_unscaled(trace)
    return [
        Finding(
            kind="bad_init_loss",
            severity="warning" if severe else "info",
            summary=(
                f"The loss at initialisation is {first:.3g}, {ratio:.2g}x the {ref:.3g} "
                "(ln of the classes) of a calibrated start: the logits start too large; "
                + (
                    "standardise the inputs."
                    if unscaled
                    else "shrink the initial weights (Xavier / He init, or a small output layer)."
                )
            ),
            evidence={
                "init_loss": round_sig(first),
                "expected_loss": round_sig(ref),
                "ratio": round_sig(ratio),
                "threshold": BAD_INIT_RATIO,
                "n_classes": trace.facts.n_classes,
            },
            remedies=(["standardize_inputs"] if unscaled else []) + ["xavier_init", "he_init"],
        )
    ]


def _inputs_unscaled(trace: Trace) -> bool:
    from .data import input_scale

    scale = input_scale(trace)
    return scale is not None and scale["unscaled"]


def _bad_init_regression(trace: Trace, first: float) -> list[Finding]:
    var = trace.facts.target_var
    if not isinstance(var, int | float) or not var > 0:
        return []
    ratio = first / var
    if not ratio > BAD_INIT_MSE_RATIO:
        return []
    return [
        Finding(
            kind="bad_init_loss",
            severity="warning",
            summary=(
                f"The loss at initialisation is {first:.3g}, {ratio:.3g}x the variance of the "
                f"targets ({var:.3g}, the loss of predicting their mean): the initial outputs "
                "are far larger than the targets; shrink the initial weights or the output layer."
            ),
            evidence={
                "init_loss": round_sig(first),
                "target_var": round_sig(var),
                "ratio": round_sig(ratio),
                "threshold": BAD_INIT_MSE_RATIO,
            },
            remedies=(["standardize_inputs"] if _inputs_unscaled(trace) else [])
            + ["xavier_init", "he_init"],
        )
    ]

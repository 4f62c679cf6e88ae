"""Gradient detectors: vanishing_gradients, exploding_gradients.

Depth is compared through each weight layer's *relative* gradient, ``||grad W|| / ||W||``:
it is scale-free, so a 3x3 conv, an attention projection and a 512-wide Linear can be set
side by side, and it is what decides how fast a layer learns (an SGD step changes the layer
by lr times it). In a healthy network the relative gradient is about the same at every depth,
the output layer's a little larger; the calibration suite's healthy setups never had the
last quarter of weight layers more than 13x the first, or the first more than 1.3x the last.
Vanishing and exploding gradients make the profile geometric, so the first and last quarters
end up orders of magnitude apart.

The published rules compare raw gradient norms (AUTOTRAINER: first/last below 1e-3 with
the first below 1e-4 is vanishing, a ratio above 70 exploding) or absolute values (SageMaker:
mean |gradient| below 1e-7). Raw norms depend on the layers' shapes and absolute ones on the
loss scale, which is how such rules end up flagging healthy models.
"""

from __future__ import annotations

import numpy as np

from ..findings import Finding
from ..trace import Trace
from ..wording import rounded
from ._common import nanmedian, round_sig, weight_layers

VANISH_RATIO = 100.0  # last / first quarter over the run: the suite's non-vanishing max is 58
# ... and at initialisation, 1000: sigmoid's slope is at most 1/4, so a healthy shallow
# sigmoid net starts with the first layers up to ~4^depth behind (3 hidden layers, Xavier:
# 69-111 at seeds 0-2) and the ratio relaxes within a few steps (to ~2.3). Vanishing cases
# of the suite start at 1.6e9 and beyond.
VANISH_RATIO_INIT = 1000.0
# Median relative gradient at initialisation below 1e-5: every layer's gradient is tiny even
# where the ratio between layers looks flat (tiny weights shrink the signal forward and the
# gradient backward, and the two cancel in the weight gradient). Suite, seeds 0-2: vanishing
# cases 2e-23 to 1.4e-6, every other case 1.3e-3 or more (dead nets, exactly 0, excepted).
TINY_RELATIVE = 1e-5
# first / last quarter: healthy networks give the output the larger relative gradient (up
# to 1.3x the other way in the suite), so a 10x excess at the input is already growth.
EXPLODE_RATIO = 10.0
# A relative gradient of 100 means any SGD step above lr 0.01 moves the weights further
# than their own size; the largest healthy layer in the suite had 3.
EXPLODE_RELATIVE = 100.0
EXPLODE_JUMP = 100.0  # total gradient norm 100x its recent median: a cliff (healthy max 7x)
JUMP_HISTORY = 20  # ... the median over the previous 20 steps
# The profile at initialisation: the median over the first 3 steps. A batch-normalised net
# can explode at step 0 and rescale itself within a few updates, so later steps hide it.
EARLY_STEPS = 1
MIN_WEIGHT_LAYERS = 3  # a depth comparison needs at least three weight layers
SEVERE_RATIO = 1e4  # four orders of magnitude: the early layers do not train at all


def relative_gradients(trace: Trace) -> tuple[list[str], np.ndarray]:
    """Weight layers' names and their ||grad|| / ||W||, (steps, weight layers)."""
    idx = weight_layers(trace)
    names = [trace.layers[i] for i in idx]
    if not idx or len(trace.layer) == 0:
        return names, np.zeros((0, len(idx)))
    grads = trace.layer.array("grad_norm_weight")[:, idx]
    weights = trace.layer.array("weight_norm")[:, idx]
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = grads / weights
    rel[~np.isfinite(rel) | (weights <= 0)] = np.nan
    return names, rel


def depth_ratio(rel: np.ndarray) -> np.ndarray:
    """Per step: median relative gradient of the last quarter of layers over the first's."""
    q = max(1, rel.shape[1] // 4)
    first = nanmedian(rel[:, :q], axis=1)
    last = nanmedian(rel[:, -q:], axis=1)
    # A very deep net can vanish so fast that the last quarter's median is 0 too (at 1,000
    # sigmoid layers only the last ~50 get a gradient that is not exactly 0): then the
    # output layer, still learning, is the reference.
    output = rel[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(
            first > 0, last / first, np.where((last > 0) | (output > 0), np.inf, np.nan)
        )


def _phases(ratio: np.ndarray, rel: np.ndarray | None = None) -> dict[str, float]:
    """The depth ratio at initialisation (the first step) and over the rest of the run
    (NaN when the trace has no more steps: a checkup's single step is initialisation).

    Exactly-zero gradients in the first quarter at the first step (an infinite ratio) are
    a design, not a symptom, when the blocks start gated shut (SkipInit / ReZero, Fixup's
    zero-initialised branches): the gates open within a step, and the layers that do get a
    gradient get an ordinary one. They count when ``rel`` shows the gradient falling to the
    zeros (some layer's relative gradient below ``TINY_RELATIVE``: an underflow).
    """
    early = ratio[:EARLY_STEPS]
    underflow = False
    if rel is not None and len(rel):
        first = rel[:EARLY_STEPS]
        underflow = bool(np.any((first > 0) & (first < TINY_RELATIVE)))
    if not underflow:
        early = np.where(np.isinf(early), np.nan, early)
    run = ratio[EARLY_STEPS:]
    return {
        "early": float(nanmedian(early)),
        "run": float(nanmedian(run)) if len(run) else float("nan"),
    }


def detect(trace: Trace) -> list[Finding]:
    names, rel = relative_gradients(trace)
    if rel.shape[0] == 0:
        return []
    findings = []
    if len(names) >= MIN_WEIGHT_LAYERS:
        findings += _vanishing(names, rel) + _exploding_with_depth(names, rel)
    findings += _exploding_in_time(trace, names, rel)
    return _one_per_kind(findings)


def _one_per_kind(findings: list[Finding]) -> list[Finding]:
    """Exploding gradients can show in depth and in time: report the first rule that fired."""
    seen: dict[str, Finding] = {}
    for f in findings:
        seen.setdefault(f.kind, f)
    return list(seen.values())


def _worst_phase(ratio: np.ndarray) -> tuple[float, str]:
    """The larger of the depth ratio at initialisation and over the run, and which it was."""
    phases = _phases(ratio)
    worst = max(phases, key=lambda k: np.nan_to_num(phases[k], nan=0.0))
    return phases[worst], "initialisation" if worst == "early" else "whole run"


def _vanishing_phase(ratio: np.ndarray, rel: np.ndarray) -> tuple[float, str, float] | None:
    """The phase in which the depth ratio passed its threshold (initialisation first):
    (ratio, phase, threshold), or None."""
    phases = _phases(ratio, rel)
    if phases["early"] > VANISH_RATIO_INIT:
        return phases["early"], "initialisation", VANISH_RATIO_INIT
    if phases["run"] > VANISH_RATIO:
        return phases["run"], "whole run", VANISH_RATIO
    return None


def _tiny_everywhere(names: list[str], rel: np.ndarray) -> list[Finding]:
    """Every layer's gradient vanishingly small against its weights at initialisation."""
    median = float(nanmedian(rel[:EARLY_STEPS]))
    if not 0 < median < TINY_RELATIVE:
        return []
    return [
        Finding(
            kind="vanishing_gradients",
            severity="warning",
            summary=(
                f"At initialisation every layer's gradient is tiny against its weights "
                f"(median {median:.2g}): the signal dies out through depth in both directions "
                "and no layer learns; use He/Xavier init, normalisation or residuals."
            ),
            layers=list(names),
            evidence={
                "median_relative_grad": round_sig(median),
                "threshold": TINY_RELATIVE,
                "phase": "initialisation",
                "weight_layers": len(names),
                "severe": True,
            },
            remedies=["xavier_init", "he_init", "batch_norm", "residual", "adam"],
        )
    ]


def _depth_evidence(names: list[str], profile: np.ndarray, phase: str) -> dict[str, object]:
    return {
        "phase": phase,
        "first_relative_grad": round_sig(float(profile[0])),
        "last_relative_grad": round_sig(float(profile[-1])),
        "weight_layers": len(names),
    }


def _vanishing(names: list[str], rel: np.ndarray) -> list[Finding]:
    hit = _vanishing_phase(depth_ratio(rel), rel)
    if hit is None:
        return _tiny_everywhere(names, rel)
    ratio, phase, threshold = hit
    profile = nanmedian(rel, axis=0)
    q = max(1, len(names) // 4)
    top = float(nanmedian(profile[-q:]))
    if not top > 0:  # the last quarter underflowed too: the output layer is the reference
        top = float(profile[-1])
    slow = [n for n, r in zip(names, profile, strict=True) if not r * VANISH_RATIO > top]
    if phase == "initialisation" and not slow and rel.shape[0] > EARLY_STEPS:
        return [_caught_up(names, ratio, profile, threshold)]
    how = (
        "underflowed to exactly 0 while the last layers' did not"
        if np.isinf(ratio)
        else f"are {rounded(ratio)}x smaller (relative to their weights) than the last layers'"
    )
    return [
        Finding(
            kind="vanishing_gradients",
            severity="warning",
            summary=(
                f"The first layers' gradients {how}, so {len(slow)} "
                f"of {len(names)} weight layers barely learn: use He/Xavier init, ReLU, "
                "normalisation or residuals."
            ),
            layers=slow or names[:q],
            evidence={
                "last_over_first": round_sig(ratio),
                "threshold": threshold,
                **_depth_evidence(names, profile, phase),
                "severe": bool(ratio > SEVERE_RATIO),
            },
            remedies=["relu_activation", "he_init", "batch_norm", "residual", "adam"],
        )
    ]


def _caught_up(names: list[str], ratio: float, profile: np.ndarray, threshold: float) -> Finding:
    """Vanishing at initialisation only: over the run no layer stayed ``VANISH_RATIO``
    behind the last layers, so the early layers did learn. A note, not a warning: a
    transformer's query and key projections start with relative gradients 10^4x below its
    head's (attention is uniform at init, BERT's N(0, 0.02^2)) and catch up within steps;
    a checkup, which sees only step 0, still warns."""
    return Finding(
        kind="vanishing_gradients",
        severity="info",
        summary=(
            f"At initialisation the first layers' gradients were {rounded(ratio)}x smaller "
            "(relative to their weights) than the last layers', but over the run every layer "
            f"stayed within {VANISH_RATIO:g}x of them: the early layers caught up and learn."
        ),
        layers=names[: max(1, len(names) // 4)],
        evidence={
            "last_over_first": round_sig(ratio),
            "threshold": threshold,
            **_depth_evidence(names, profile, "initialisation"),
            "run_threshold": VANISH_RATIO,
            "caught_up": True,
        },
        remedies=["he_init", "xavier_init", "batch_norm", "residual"],
    )


def _exploding_with_depth(names: list[str], rel: np.ndarray) -> list[Finding]:
    with np.errstate(divide="ignore"):
        ratio, phase = _worst_phase(1.0 / depth_ratio(rel))
    if not ratio > EXPLODE_RATIO:
        return []
    profile = nanmedian(rel, axis=0)
    q = max(1, len(names) // 4)
    bottom = float(nanmedian(profile[-q:]))
    big = [n for n, r in zip(names, profile, strict=True) if r > EXPLODE_RATIO * bottom]
    inner = float("nan")  # the same ratio without the output layer (see causes.py)
    if rel.shape[1] > MIN_WEIGHT_LAYERS:
        with np.errstate(divide="ignore"):
            inner, _ = _worst_phase(1.0 / depth_ratio(rel[:, :-1]))
    return [
        Finding(
            kind="exploding_gradients",
            severity="warning",
            summary=(
                f"Gradients grow {rounded(ratio)}x from the last layers to the first (relative to "
                "their weights), so the early layers take outsized steps: clip the gradient, "
                "lower the learning rate, or rescale the init."
            ),
            layers=big or names[:q],
            evidence={
                "first_over_last": round_sig(ratio),
                "first_over_last_before_output": round_sig(inner),
                "threshold": EXPLODE_RATIO,
                **_depth_evidence(names, profile, phase),
            },
            remedies=[
                "gradient_clipping",
                "lower_lr",
                "orthogonal_init",
                "xavier_init",
                "residual",
            ],
        )
    ]


def _exploding_in_time(trace: Trace, names: list[str], rel: np.ndarray) -> list[Finding]:
    """Gradients huge against the weights, or jumping by orders of magnitude between steps."""
    median_rel = nanmedian(rel, axis=1) if rel.shape[1] else np.zeros(0)
    peak_rel = float(np.nanmax(median_rel)) if np.isfinite(median_rel).any() else float("nan")
    total = trace.steps.array("grad_norm_total")[:, 0]
    jump, jump_step = float("nan"), None
    for t in range(EARLY_STEPS, len(total)):
        history = total[max(0, t - JUMP_HISTORY) : t]
        history = history[np.isfinite(history) & (history > 0)]
        if len(history) and np.isfinite(total[t]):
            j = float(total[t] / np.median(history))
            if not jump >= j:
                jump, jump_step = j, int(trace.steps.steps[t])
    if peak_rel > EXPLODE_RELATIVE:
        step = int(trace.steps.steps[int(np.nanargmax(median_rel))])
        summary = (
            f"At step {step} the gradients were {rounded(peak_rel)}x the size of the weights "
            "themselves, so every update overshoots: lower the learning rate, clip the "
            "gradient, or rescale the init."
        )
        evidence: dict[str, float | int | None] = {
            "relative_grad": round_sig(peak_rel),
            "threshold": EXPLODE_RELATIVE,
            "step": step,
        }
    elif jump > EXPLODE_JUMP:
        summary = (
            f"At step {jump_step} the gradient norm jumped to {rounded(jump)}x its recent "
            "median, a cliff that throws the weights off course: clip the gradient or "
            "lower the learning rate."
        )
        evidence = {"jump": round_sig(jump), "threshold": EXPLODE_JUMP, "step": jump_step}
    else:
        return []
    return [
        Finding(
            kind="exploding_gradients",
            severity="warning",
            summary=summary,
            layers=list(names),
            evidence=evidence,
            remedies=["gradient_clipping", "lower_lr", "lr_warmup", "xavier_init"],
        )
    ]

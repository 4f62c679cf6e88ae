"""Activation detectors: saturated_units (sigmoid / tanh tails), dead_units (silent ReLUs).

They read the Probe's sampled activation table: activation modules, and activations applied
as functions as the next layer receives them (``stats.ForwardWalk``).

Saturation is judged at the start of training. Units that start in their flat tails cannot
learn their way out, which is the disease; units that *end* saturated after the loss fell
have learned confident features (a tanh net that fits spirals ends with two thirds of its
units beyond |0.99|), which is not.
"""

from __future__ import annotations

import numpy as np

from ..findings import Finding
from ..trace import Trace
from ._common import finite_loss, nanmedian, relative_drop, round_sig

SATURATED_FRAC = 0.5  # half a layer's outputs within 1% of the bounds: its gradient is gone
# A quarter in the tails from the start is a warning too when the loss then barely moved
# (below LEARNING_DROP): the plain-PyTorch label's "present" line. Healthy sigmoid / tanh
# nets start with 1-5% there (a unit-variance pre-activation's tails).
SATURATED_STUCK_FRAC = 0.25
EARLY_SAMPLES = 3  # "at the start": the first 3 activation samples (step 0 and the next two)
LEARNING_DROP = 0.2  # late saturation matters only if the loss fell by less than 20%
DEAD_FRAC = 0.5  # half of a layer's units silent for a whole batch: half its width is lost
DEAD_INFO = 0.25  # a quarter silent: worth a note (batch-level, so partly chance)


def _per_layer(trace: Trace, stat: str) -> tuple[list[str], np.ndarray]:
    if len(trace.acts) == 0 or not trace.act_layers:
        return [], np.zeros((0, 0))
    values = trace.acts.array(stat)
    keep = [i for i in range(values.shape[1]) if np.isfinite(values[:, i]).any()]
    return [trace.act_layers[i] for i in keep], values[:, keep]


def detect(trace: Trace) -> list[Finding]:
    return _saturated(trace) + _dead(trace)


def _saturated(trace: Trace) -> list[Finding]:
    names, sat = _per_layer(trace, "saturated_frac")
    if not names:
        return []
    early = nanmedian(sat[:EARLY_SAMPLES], axis=0)
    late = nanmedian(sat[len(sat) // 2 :], axis=0)
    loss = finite_loss(trace)
    drop = relative_drop(loss) if len(loss) else float("nan")
    learning = bool(drop >= LEARNING_DROP)
    start_line = SATURATED_FRAC if learning else SATURATED_STUCK_FRAC
    at_start = [n for n, v in zip(names, early, strict=True) if v > start_line]
    at_end = [n for n, v in zip(names, late, strict=True) if v > SATURATED_FRAC]
    if at_start or (at_end and not learning):
        layers, severity = (at_start or at_end), "warning"
        when = "from the start" if at_start else "while the loss barely moved"
    elif at_end:
        layers, severity, when = at_end, "info", "at the end, after the loss fell"
    else:
        return []
    worst = float(np.nanmax(np.concatenate([early, late])))
    kinds = sorted({trace.act_kinds.get(n, "?") for n in layers})
    summary = (
        f"{len(layers)} {'/'.join(kinds)} layer(s) have up to {100 * worst:.0f}% of their "
        f"outputs in the flat tails {when}: "
        + (
            "switch to ReLU, or use Xavier init, normalisation or standardised inputs."
            if severity == "warning"
            else "confident units that learned; no action needed unless learning stalls."
        )
    )
    return [
        Finding(
            kind="saturated_units",
            severity=severity,
            summary=summary,
            layers=layers,
            evidence={
                "saturated_frac_start": round_sig(float(np.nanmax(early))),
                "saturated_frac_end": round_sig(float(np.nanmax(late))),
                "threshold": start_line if at_start else SATURATED_FRAC,
                "loss_drop": round_sig(drop),
                "learning_drop": LEARNING_DROP,
                "sources": [trace.act_sources.get(n) for n in layers],
            },
            remedies=["relu_activation", "xavier_init", "batch_norm", "standardize_inputs"],
        )
    ]


def _dead(trace: Trace) -> list[Finding]:
    names, dead = _per_layer(trace, "dead_frac")
    if not names:
        return []
    late = nanmedian(dead[len(dead) // 2 :], axis=0)
    worst = float(np.nanmax(late))
    if not worst > DEAD_INFO:
        return []
    severe = worst > DEAD_FRAC
    layers = [
        n for n, v in zip(names, late, strict=True) if v > (DEAD_FRAC if severe else DEAD_INFO)
    ]
    return [
        Finding(
            kind="dead_units",
            severity="warning" if severe else "info",
            summary=(
                f"Up to {100 * worst:.0f}% of the units in {len(layers)} ReLU layer(s) output "
                "zero for every input of a batch and no longer learn: use leaky ReLU, He init "
                "with zero biases, or a lower learning rate."
            ),
            layers=layers,
            evidence={
                "dead_frac": round_sig(worst),
                "threshold": DEAD_FRAC,
                "per_layer": {n: round_sig(float(v)) for n, v in zip(names, late, strict=True)},
                "sources": [trace.act_sources.get(n) for n in layers],
            },
            remedies=["leaky_relu_activation", "he_init", "lower_lr", "batch_norm"],
        )
    ]

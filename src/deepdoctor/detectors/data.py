"""Data detectors: unscaled_inputs (from the Probe's input table), class_imbalance (from the
class counts in ``trace.facts``, which ``diagnose`` takes from the training set and the Probe
from the targets given to ``record_loss``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..findings import Finding
from ..trace import Trace
from ._common import nanmedian, round_sig

# Root-mean-square of the inputs above 3: raw pixel values (digits' 0..16 give ~8) and the
# like. Standardised data gives ~1; images in [0, 1] give ~0.3 and train fine.
UNSCALED_RMS = 3.0
UNSCALED_OFFSET = 3.0  # a feature whose batch mean sits 3 units from zero
TINY_RMS = 0.01  # inputs this small starve the first layer of signal
IMBALANCE_RATIO = 10.0  # most / least frequent class: 10x makes a model ignore the rare
IMBALANCE_INFO = 3.0  # 3x: worth knowing, usually harmless
# Fewer than 20 examples per class on average (a checkup's single batch, say): counts that
# small swing by chance (a balanced batch of 64 over 10 classes often holds 1 and 12 of
# two classes: "12x"), so the balance is not judged. From 20 a balanced draw rarely strays
# past 3:1 (Poisson, mean 20: 2.5th and 97.5th percentiles 12 and 29).
MIN_PER_CLASS = 20


def input_scale(trace: Trace) -> dict[str, Any] | None:
    """Median (over sampled steps) scale of the inputs, and whether it is off."""
    if len(trace.inputs) == 0:
        return None
    stats = {s: float(nanmedian(trace.inputs.array(s)[:, 0])) for s in trace.inputs.stats}
    if not all(math.isfinite(stats[s]) for s in ("mean", "std")):
        return None
    rms = math.sqrt(stats["mean"] ** 2 + stats["std"] ** 2)
    offset = stats["feature_mean_absmax"]
    stats.update(rms=rms, unscaled=rms > UNSCALED_RMS or offset > UNSCALED_OFFSET or rms < TINY_RMS)
    return stats


def detect(trace: Trace) -> list[Finding]:
    return _unscaled(trace) + _imbalance(trace)


def _unscaled(trace: Trace) -> list[Finding]:
    scale = input_scale(trace)
    if scale is None or not scale["unscaled"]:
        return []
    rms = scale["rms"]
    what = (
        f"tiny (root-mean-square {rms:.2g})"
        if rms < TINY_RMS
        else f"on a scale of {rms:.3g} (largest feature mean {scale['feature_mean_absmax']:.3g},"
        f" largest feature spread {scale['feature_std_max']:.3g})"
    )
    return [
        Finding(
            kind="unscaled_inputs",
            severity="warning",
            summary=(
                f"The inputs are {what} instead of about zero mean and unit scale: "
                "standardise each feature with the training set's mean and std."
            ),
            layers=[trace.layers[0]] if trace.layers else [],
            evidence={
                "rms": round_sig(rms),
                "mean": round_sig(scale["mean"]),
                "std": round_sig(scale["std"]),
                "feature_mean_absmax": round_sig(scale["feature_mean_absmax"]),
                "feature_std_max": round_sig(scale["feature_std_max"]),
                "threshold_rms": UNSCALED_RMS,
                "threshold_offset": UNSCALED_OFFSET,
            },
            remedies=["standardize_inputs", "batch_norm"],
        )
    ]


def _imbalance(trace: Trace) -> list[Finding]:
    counts = trace.facts.class_counts
    # Per-position classes (a language model's vocabulary, a tagger's tags) are skewed by
    # nature (Zipf's law; most tokens are no entity): weighting them is no remedy.
    if not counts or len(counts) < 2 or trace.facts.targets_per_position:
        return []
    c = np.asarray(counts, dtype=float)
    present = c[c > 0]
    if len(present) < 2 or c.sum() < MIN_PER_CLASS * len(c):
        return []
    ratio = float(present.max() / present.min())
    if not ratio >= IMBALANCE_INFO:
        return []
    severe = ratio >= IMBALANCE_RATIO
    top = int(np.argmax(c))
    rare = [int(k) for k in np.flatnonzero((c > 0) & (c * IMBALANCE_INFO <= c.max()))]
    share = float(c.max() / c.sum())
    return [
        Finding(
            kind="class_imbalance",
            severity="warning" if severe else "info",
            summary=(
                f"Class {top} has {ratio:.3g}x as many training examples as the rarest "
                f"({100 * share:.0f}% of all), so the model can ignore {len(rare)} rare "
                "classes: weight the loss by inverse class frequency."
            ),
            evidence={
                "max_over_min": round_sig(ratio),
                "threshold": IMBALANCE_RATIO,
                "majority_class": top,
                "majority_share": round_sig(share),
                "rare_classes": rare,
                "class_counts": [int(x) for x in c],
            },
            remedies=["class_weights", "data_augmentation"],
        )
    ]

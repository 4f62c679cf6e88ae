"""Small readings of a Trace that several detector families share."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..trace import Trace

LOSS_WINDOW_FRACTION = 0.1  # start / end of the loss curve: medians over 10% of the steps
MIN_LOSS_WINDOW = 3  # ... and over at least 3 steps, because one mini-batch is noisy


def nanmedian(a: np.ndarray, axis: int | None = None) -> Any:
    """The median ignoring NaN, NaN for an all-NaN slice (np.nanmedian without its warning).

    Written out because np.nanmedian takes a masked-array path on small arrays that costs
    ~0.2 ms a call, and the detectors make hundreds of calls on a checkup's single step.
    """
    a = np.asarray(a, dtype=np.float64)
    if axis is None:
        kept = a[~np.isnan(a)]
        return np.median(kept) if kept.size else np.float64(np.nan)
    axis = axis % a.ndim
    if a.shape[axis] == 0:
        return np.full(np.delete(a.shape, axis), np.nan)
    ordered = np.moveaxis(np.sort(a, axis=axis), axis, -1)  # NaN sorts last
    count = np.moveaxis((~np.isnan(a)).sum(axis=axis, keepdims=True), axis, -1)
    low = np.take_along_axis(ordered, np.maximum(count - 1, 0) // 2, axis=-1)[..., 0]
    high = np.take_along_axis(ordered, count // 2, axis=-1)[..., 0]
    with np.errstate(invalid="ignore"):
        median = (low + high) / 2
    return np.where(count[..., 0] > 0, median, np.nan)


def weight_layers(trace: Trace) -> list[int]:
    """Indices (into ``trace.layers``) of the weight layers (``trace.weight_layers``, as the
    Probe judged them with ``stats.is_weight_layer``), in forward order."""
    weights = set(trace.weight_layers)
    return [i for i, name in enumerate(trace.layers) if name in weights]


def finite_loss(trace: Trace) -> np.ndarray:
    """The recorded training losses that are finite, in step order."""
    loss = trace.loss()
    return loss[np.isfinite(loss)]


def window(n: int) -> int:
    return max(MIN_LOSS_WINDOW, int(math.ceil(LOSS_WINDOW_FRACTION * n)))


def loss_start_end(loss: np.ndarray) -> tuple[float, float]:
    """Median loss over the first and over the last window of steps."""
    w = window(len(loss))
    return float(np.median(loss[:w])), float(np.median(loss[-w:]))


def smooth(loss: np.ndarray) -> np.ndarray:
    """Running median over a window of steps: mini-batch noise out, the trend kept."""
    w = window(len(loss))
    if len(loss) <= w:
        return loss.copy()
    return np.array([np.median(loss[max(0, i - w + 1) : i + 1]) for i in range(w - 1, len(loss))])


def relative_drop(loss: np.ndarray) -> float:
    """How much of its starting value the loss lost over the run (negative when it grew)."""
    start, end = loss_start_end(loss)
    return (start - end) / start if start > 0 else math.nan


def eval_series(trace: Trace, stat: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of an evaluation metric, keeping only finite values."""
    if len(trace.evals) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    steps, values = trace.eval_metric(stat)
    keep = np.isfinite(values)
    return steps[keep], values[keep]


def stopped_early(trace: Trace) -> bool:
    return trace.facts.stop_reason not in ("completed", None)


def round_sig(x: float, digits: int = 3) -> float:
    """A number rounded to ``digits`` significant figures, for evidence a person reads."""
    if not isinstance(x, int | float) or not math.isfinite(x) or x == 0:
        return float(x)
    return round(float(x), digits - 1 - int(math.floor(math.log10(abs(x)))))

"""What treat compares runs by: the score, the trivial predictor's score, the noise margin.

A remedy is kept only when its run beats three things (``deepdoctor.treat`` says why):

- the untreated run, by more than the seed-to-seed noise of the short screen, measured from
  several seeds with a median-based spread so that one broken rerun cannot inflate it;
- a trivial predictor (the majority class, or the training mean for a regression), by a real
  margin: a model that predicts one class for everything is not repaired, whatever it beats;
- and it must leave no critical finding that the untreated run lacked (``search``).

The score is validation accuracy, balanced accuracy (the mean of the per-class recalls) when
the classes are imbalanced -- plain accuracy rewards predicting the majority class, and
class weights lower it while they help the rare classes -- or minus the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .detectors.data import IMBALANCE_INFO
from .training import History, infer_task, is_loader, loader_tensors

MIN_GAIN_ACCURACY = 0.01  # a kept remedy gains at least one point of the accuracy score ...
MIN_GAIN_LOSS = 0.02  # ... or, scored by the loss, 2% of the untreated run's loss
# Above the trivial predictor by this much (accuracy points; for a loss, this share of the
# trivial predictor's loss): a constant predictor's accuracy moves by a point or two with the
# split, so less is no evidence the model learned anything.
TRIVIAL_MARGIN_ACCURACY = 0.02
TRIVIAL_MARGIN_LOSS = 0.05
# A robust standard deviation from the median absolute deviation of normal samples.
MAD_TO_SIGMA = 1.4826
# The noise margin is this many robust standard deviations of the screen's score over seeds.
NOISE_SIGMAS = 2.0
# Rerun the baseline at a further seed only when the first rerun disagrees with it by more
# than this many minimum gains: two agreeing seeds are evidence enough of a quiet setup.
AGREE_GAINS = 2.0
SAMPLE_ROWS = 100_000  # read at most this many validation targets from a loader

METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy")


def metrics_of(history: History) -> dict[str, float]:
    """The metrics of the model a run returns (see ``History.final``)."""
    final = history.final
    return {k: float(final[k]) for k in METRICS if k in final}


@dataclass(frozen=True)
class Scoring:
    """How runs are compared: which metric, and what a trivial predictor scores with it."""

    metric: str  # "balanced_accuracy" | "accuracy" | "loss"
    trivial: float  # the trivial predictor's score (higher is better); NaN when unknown
    trivial_what: str  # the trivial predictor, in words
    why: str  # why this metric, in words (stated in the report)

    @property
    def uses_accuracy(self) -> bool:
        return self.metric != "loss"

    def of(self, metrics: dict[str, Any]) -> float:
        """Higher is better; a run whose loss is not finite scores minus infinity."""
        loss = metrics.get("val_loss", metrics.get("train_loss", math.nan))
        if loss is None or not math.isfinite(loss):
            return -math.inf
        if self.uses_accuracy:
            keys: tuple[str, ...] = ("val_accuracy", "train_accuracy")
            if self.metric == "balanced_accuracy":
                keys = ("val_balanced_accuracy", *keys)
            for key in keys:
                v = metrics.get(key, math.nan)
                if v is not None and math.isfinite(v):
                    return float(v)
        return -float(loss)

    def at(self, history: History, step: int) -> float:
        """The score of the evaluation at ``step`` (or the last one before it)."""
        chosen: dict[str, float] | None = None
        for e in history.evals:
            if e["step"] <= step:
                chosen = e
        return self.of(chosen) if chosen else -math.inf

    def min_gain(self, base_score: float) -> float:
        """The least gain over the untreated run that counts; nothing when it is not finite
        (any finite run beats a blown-up one: the trivial predictor then sets the bar)."""
        if not math.isfinite(base_score):
            return 0.0
        return MIN_GAIN_ACCURACY if self.uses_accuracy else MIN_GAIN_LOSS * abs(base_score)

    def trivial_bar(self) -> float:
        """A score must be above this to show that the model learned anything."""
        if not math.isfinite(self.trivial):
            return -math.inf
        if self.uses_accuracy:
            return self.trivial + TRIVIAL_MARGIN_ACCURACY
        return self.trivial + TRIVIAL_MARGIN_LOSS * abs(self.trivial)

    def beats_trivial(self, score: float, screen: bool = False) -> bool:
        """Above the trivial predictor by a real margin; a short screen, still early in its
        run, only by the minimum gain (the full run must clear the whole margin)."""
        if screen and math.isfinite(self.trivial):
            return score > self.trivial + self.min_gain(self.trivial)
        return score > self.trivial_bar()

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "trivial": self.trivial if math.isfinite(self.trivial) else None,
            "trivial_what": self.trivial_what,
            "why": self.why,
        }


def noise_margin(samples: list[float], min_gain: float) -> tuple[float, float]:
    """The noise margin and the spread behind it, from one score per seed at the screen.

    spread: ``MAD_TO_SIGMA`` times the median absolute deviation from the median of the
    finite samples (one broken rerun out of three moves neither); the margin is
    ``NOISE_SIGMAS`` spreads, and at least ``min_gain``. With fewer than two finite samples
    (a run that blew up at every seed) there is no spread to measure: NaN, margin min_gain.
    """
    finite = np.array([s for s in samples if math.isfinite(s)], dtype=float)
    if finite.size < 2:
        return min_gain, math.nan
    if finite.size == 2:
        # Two samples: their half-difference is the median absolute deviation.
        spread = MAD_TO_SIGMA * abs(finite[0] - finite[1]) / 2
    else:
        spread = MAD_TO_SIGMA * float(np.median(np.abs(finite - np.median(finite))))
    return max(min_gain, NOISE_SIGMAS * spread), spread


def needs_another_seed(samples: list[float], min_gain: float) -> bool:
    """After one rerun: True when the two disagree too much to trust a margin from them."""
    finite = [s for s in samples if math.isfinite(s)]
    if len(finite) < len(samples):
        return True
    return abs(samples[0] - samples[1]) > AGREE_GAINS * max(min_gain, MIN_GAIN_ACCURACY / 10)


def scoring_for(exp: Any) -> Scoring:
    """The score for this experiment: balanced accuracy on imbalanced classes (most / least
    frequent >= ``IMBALANCE_INFO``), accuracy on other classification, else the loss."""
    y_train = _targets(exp.train)
    y_val = _targets(exp.val) if exp.val is not None else y_train
    task = infer_task(y_train, exp.loss_fn)
    if task == "regression":
        return _loss_scoring(exp, y_train, y_val)
    labels = y_val.reshape(-1).long()
    labels = labels[labels >= 0]  # ignore_index positions
    counts = torch.bincount(labels) if labels.numel() else torch.zeros(1, dtype=torch.long)
    present = counts[counts > 0]
    train_labels = y_train.reshape(-1).long()
    train_labels = train_labels[train_labels >= 0]
    train_counts = torch.bincount(train_labels).double() if train_labels.numel() else counts
    train_counts = train_counts[train_counts > 0]
    ratio = float(train_counts.max() / train_counts.min()) if train_counts.numel() > 1 else 1.0
    majority = int(torch.argmax(counts))
    if ratio >= IMBALANCE_INFO and present.numel() > 1:
        return Scoring(
            "balanced_accuracy",
            1.0 / present.numel(),
            f"predicting one class for every sample (balanced accuracy {1 / present.numel():.3g})",
            f"the training classes are {ratio:.1f}x imbalanced, and plain accuracy rewards "
            "predicting the frequent ones",
        )
    share = float(present.max() / present.sum()) if present.numel() else math.nan
    return Scoring(
        "accuracy",
        share,
        f"predicting the majority class ({majority}) for every sample ({share:.3g})",
        "the classes are balanced enough for plain accuracy",
    )


def _loss_scoring(exp: Any, y_train: torch.Tensor, y_val: torch.Tensor) -> Scoring:
    loss_fn = exp.loss_fn
    mse = loss_fn is None or (isinstance(loss_fn, nn.MSELoss) and loss_fn.reduction == "mean")
    if not mse:
        return Scoring("loss", math.nan, "unknown for this loss", "regression: minus the loss")
    mean = y_train.float().mean(0)
    trivial = float(((y_val.float() - mean) ** 2).mean())
    return Scoring(
        "loss",
        -trivial,
        f"predicting the training mean for every sample (MSE {trivial:.3g})",
        "regression: minus the validation loss",
    )


def _targets(data: Any) -> torch.Tensor:
    if is_loader(data):
        return loader_tensors(data, SAMPLE_ROWS)[1]
    return torch.as_tensor(data[1])

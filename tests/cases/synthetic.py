"""Data sets of the later families, generated here in numpy with fixed seeds (no download).

Each returns a ``deepdoctor.data.Split`` like ``data.load``, with train and validation drawn
from the same distribution, and says in ``info`` what its best achievable loss is where the
data has a Bayes error (labels or targets that no model can predict exactly), so a healthy
run that stays well above zero can be read against it.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch

from deepdoctor.data import Split

SEED = 20261201  # one fixed seed per data set: every case of a family sees the same data


def _split(name: str, X: np.ndarray, y: np.ndarray, classes: int, **info: object) -> Split:
    """The first 80% for training, the rest for validation (the samples are i.i.d.)."""
    cut = int(0.8 * len(X))
    target_dtype = torch.long if classes else torch.float32
    return Split(
        name=name,
        X_train=torch.as_tensor(X[:cut], dtype=torch.float32),
        y_train=torch.as_tensor(y[:cut], dtype=target_dtype),
        X_val=torch.as_tensor(X[cut:], dtype=torch.float32),
        y_val=torch.as_tensor(y[cut:], dtype=target_dtype),
        n_classes=classes,
        info=dict(info),
    )


def _teacher_logits(rng: np.random.Generator, X: np.ndarray, outputs: int) -> np.ndarray:
    """A random 2-layer tanh teacher (gain 1.5, as ``data.load("teacher")``), centred."""
    h = X
    for _ in range(2):
        W = rng.standard_normal((h.shape[1], 64)) * 1.5 / math.sqrt(h.shape[1])
        h = np.tanh(h @ W)
    out = h @ (rng.standard_normal((64, outputs)) / math.sqrt(64))
    return (out - out.mean(0)) / out.std(0)


@cache
def noisy_teacher(
    n: int = 4000, features: int = 20, classes: int = 4, sharpness: float = 2.0
) -> Split:
    """Labels *sampled* from the softmax of a teacher's logits (times ``sharpness``), in
    training and validation alike: the Bayes error is part of the data, and even the teacher
    itself has a loss of ``info["bayes_loss"]`` (the mean entropy of its label distribution)."""
    rng = np.random.default_rng(SEED)
    X = rng.standard_normal((n, features))
    logits = sharpness * _teacher_logits(rng, X, classes)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    bayes = float(-(p * np.log(p)).sum(1).mean())
    return _split("noisy-teacher", X, y, classes, bayes_loss=bayes, chance_loss=math.log(classes))


@cache
def overlap(
    n: int = 2000, features: int = 10, separation: float = 2.0, scale: float = 1.0
) -> Split:
    """Two Gaussian classes with identity covariance whose means are ``separation`` apart
    along a random direction: they overlap, and the best possible classifier (a linear one)
    errs on Phi(-separation / 2) of the samples (16% at 2.0). ``scale`` multiplies the inputs
    and adds ``10 * scale`` to the first feature (an unscaled variant of the same task)."""
    rng = np.random.default_rng(SEED + 1)
    y = np.arange(n) % 2
    rng.shuffle(y)
    direction = rng.standard_normal(features)
    direction /= np.linalg.norm(direction)
    X = rng.standard_normal((n, features)) + np.outer(y - 0.5, direction) * separation
    margin = separation / 2
    # the Bayes posterior's mean cross-entropy: E log(1 + exp(-2 m z)), z ~ N(m, 1)
    z = margin + np.random.default_rng(0).standard_normal(200_000)
    bayes = float(np.log1p(np.exp(-2 * margin * z)).mean())
    error = 0.5 * math.erfc(margin / math.sqrt(2))
    if scale != 1.0:
        X = X * scale
        X[:, 0] += 10 * scale
    return _split("overlap", X, y, 2, bayes_loss=bayes, bayes_error=error, chance_loss=math.log(2))


@cache
def regression_teacher(n: int = 4000, features: int = 10, noise: float = 0.3) -> Split:
    """Regression: the target is a random tanh teacher's output (standardised) plus Gaussian
    noise of std ``noise``; the best achievable mean squared error is ``noise ** 2``."""
    rng = np.random.default_rng(SEED + 2)
    X = rng.standard_normal((n, features))
    y = _teacher_logits(rng, X, 1)[:, 0] + noise * rng.standard_normal(n)
    return _split("regression-teacher", X, y, 0, bayes_mse=noise**2, target_var=float(y.var()))


@cache
def tokens(n: int = 3000, length: int = 12, vocab: int = 8, flip: float = 0.1) -> Split:
    """Token sequences (ids 1..vocab-1; 0 is the padding id, never used) labelled 1 when
    token 1 occurs more often than token 2 and 0 when less (ties are redrawn), then each
    label flipped with probability ``flip``, in training and validation alike: the best
    achievable loss is the flip's entropy (0.33 nat at 0.1), so a fitted model's loss
    settles there instead of shrinking towards 0. Inputs are int64 ids for an embedding."""
    rng = np.random.default_rng(SEED + 3)
    X = rng.integers(1, vocab, size=(3 * n, length))
    ones, twos = (X == 1).sum(1), (X == 2).sum(1)
    keep = ones != twos
    X, y = X[keep][:n], (ones > twos)[keep][:n].astype(np.int64)
    y = np.where(rng.random(len(y)) < flip, 1 - y, y)
    bayes = -(flip * math.log(flip) + (1 - flip) * math.log(1 - flip)) if flip > 0 else 0.0
    split = _split("tokens", X, y, 2, vocab=vocab, length=length, bayes_loss=bayes)
    split.X_train, split.X_val = split.X_train.long(), split.X_val.long()
    return split

"""What treat compares runs by: balanced accuracy, the trivial predictor, the noise margin.

Every expected number is computed here independently (scikit-learn, numpy), not by the code
under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score
from torch import nn

from deepdoctor.experiment import Experiment
from deepdoctor.scoring import MAD_TO_SIGMA, NOISE_SIGMAS, noise_margin, scoring_for
from deepdoctor.training import evaluate_metrics


def _imbalanced(n: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 6, generator=g)
    y = torch.zeros(n, dtype=torch.long)
    y[: n // 10] = 1  # 9x imbalanced
    y[n // 10 : n // 10 + n // 20] = 2
    return X, y


def test_balanced_accuracy_equals_scikit_learns() -> None:
    torch.manual_seed(0)
    X, y = _imbalanced()
    model = nn.Linear(6, 3)
    got = evaluate_metrics(model, X, y, nn.CrossEntropyLoss(), "classification")
    with torch.no_grad():
        predicted = model(X).argmax(1)
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, predicted))
    assert got["accuracy"] == pytest.approx(float((predicted == y).float().mean()))


def test_imbalanced_classes_are_scored_by_balanced_accuracy_against_one_over_classes() -> None:
    X, y = _imbalanced()
    exp = Experiment(lambda: nn.Linear(6, 3), (X, y), (X, y))
    sc = scoring_for(exp)
    assert sc.metric == "balanced_accuracy"
    assert sc.trivial == pytest.approx(1 / 3)
    # A model that predicts the majority class for everything: accuracy 0.85, balanced 1/3.
    assert not sc.beats_trivial(balanced_accuracy_score(y, np.zeros(len(y))))
    assert sc.of({"val_loss": 0.5, "val_accuracy": 0.85, "val_balanced_accuracy": 0.34}) == 0.34


def test_balanced_classes_are_scored_by_accuracy_against_the_majority_share() -> None:
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(300, 4, generator=g), torch.randint(0, 3, (300,), generator=g)
    sc = scoring_for(Experiment(lambda: nn.Linear(4, 3), (X, y), (X, y)))
    assert sc.metric == "accuracy"
    assert sc.trivial == pytest.approx(float(np.bincount(y.numpy()).max() / 300))
    assert not sc.beats_trivial(sc.trivial + 0.01) and sc.beats_trivial(sc.trivial + 0.03)


def test_a_regression_is_scored_by_minus_the_loss_against_the_mean_predictor() -> None:
    g = torch.Generator().manual_seed(2)
    X, y = torch.randn(200, 4, generator=g), 3 + 2 * torch.randn(200, generator=g)
    Xv, yv = torch.randn(100, 4, generator=g), 3 + 2 * torch.randn(100, generator=g)
    sc = scoring_for(Experiment(lambda: nn.Linear(4, 1), (X, y), (Xv, yv)))
    expected = float(np.mean((yv.numpy() - y.numpy().mean()) ** 2))
    assert sc.metric == "loss" and sc.trivial == pytest.approx(-expected, rel=1e-5)
    assert sc.of({"val_loss": 1.5}) == -1.5 and sc.of({"val_loss": math.inf}) == -math.inf


def test_the_noise_margin_ignores_one_broken_rerun() -> None:
    # The case: batch norm's screen at 0.981 / 0.97 with one rerun broken at 0.833.
    margin, spread = noise_margin([0.981, 0.833, 0.975], min_gain=0.01)
    median = np.median([0.981, 0.833, 0.975])
    mad = np.median(np.abs(np.array([0.981, 0.833, 0.975]) - median))
    assert spread == pytest.approx(MAD_TO_SIGMA * mad)
    assert margin == pytest.approx(max(0.01, NOISE_SIGMAS * MAD_TO_SIGMA * mad)) and margin < 0.02
    # a wide spread between data orders is measured, not floored away
    margin, _ = noise_margin([0.50, 0.84, 0.62], min_gain=0.01)
    assert margin == pytest.approx(NOISE_SIGMAS * MAD_TO_SIGMA * 0.12)


def test_the_noise_margin_of_a_run_that_blew_up_at_every_seed_is_the_minimum_gain() -> None:
    assert noise_margin([-math.inf, -math.inf], min_gain=0.0) == (
        0.0,
        pytest.approx(math.nan, nan_ok=True),
    )
    margin, spread = noise_margin([-math.inf, 0.4, 0.42], min_gain=0.01)
    assert spread == pytest.approx(MAD_TO_SIGMA * 0.01) and margin == pytest.approx(
        0.01 * 2 * MAD_TO_SIGMA
    )


def test_a_short_screen_needs_only_the_minimum_gain_over_the_trivial_predictor() -> None:
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(300, 4, generator=g), torch.randint(0, 3, (300,), generator=g)
    sc = scoring_for(Experiment(lambda: nn.Linear(4, 3), (X, y), (X, y)))
    early = sc.trivial + 0.015  # the stalled transformer's raise_lr screen: 0.2975 vs 0.281
    assert sc.beats_trivial(early, screen=True) and not sc.beats_trivial(early)
    assert not sc.beats_trivial(sc.trivial, screen=True)  # a flip to the majority share

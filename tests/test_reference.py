"""The reference models (deepdoctor.reference) and underfitting judged against them."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.datasets import make_circles, make_classification
from torch import nn

import deepdoctor as dd
from deepdoctor.detectors import fit
from deepdoctor.reference import MAX_FEATURES, fit_reference
from deepdoctor.trace import Trace
from deepdoctor.training import evaluate


def _split(X, y, n_train=1500):  # type: ignore[no-untyped-def]
    X = torch.tensor(X, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    return (X[:n_train], y[:n_train]), (X[n_train:], y[n_train:])


def noisy_two_class():  # type: ignore[no-untyped-def]
    """Two classes, 30% of the labels flipped: the best achievable log loss is far above 0."""
    X, y = make_classification(
        n_samples=2000, n_features=10, n_informative=5, flip_y=0.3, random_state=0
    )
    return _split(X, y)


def circles():  # type: ignore[no-untyped-def]
    """Two concentric circles: a linear model cannot beat chance, a tree model nearly can't miss."""
    X, y = make_circles(n_samples=2000, noise=0.1, factor=0.5, random_state=0)
    return _split(X, y)


def _underfitting(diag: dd.Diagnosis) -> list[dd.Finding]:
    return [f for f in diag.findings if f.kind == "underfitting"]


def test_healthy_mlp_on_noisy_labels_is_not_underfitting() -> None:
    torch.set_num_threads(1)
    train, val = noisy_two_class()
    torch.manual_seed(0)
    model = dd.models.mlp(10, 2, depth=2, width=64)
    diag = dd.diagnose(
        model, train, val, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), steps=300
    )
    end = diag.history.final
    ref = diag.trace.facts.reference
    assert ref is not None and ref["source"] == "validation"
    # the old rule (training loss above half of ln 2) would have called this run underfitting
    assert end["train_loss"] > fit.UNDERFIT_FRACTION * math.log(2)
    # ... but the reference does no better than the network
    assert 0.4 < ref["val_loss"] < 0.6
    assert end["val_loss"] < ref["val_loss"] + 0.1
    assert not [f for f in _underfitting(diag) if f.is_problem]


def _linear_on_circles(**options: object) -> dd.Diagnosis:
    torch.set_num_threads(1)
    train, val = circles()
    torch.manual_seed(0)
    return dd.diagnose(
        dd.models.mlp(2, 2, depth=0),
        train,
        val,
        optimizer=lambda p: torch.optim.Adam(p, lr=3e-2),
        steps=200,
        **options,  # type: ignore[arg-type]
    )


def test_linear_model_on_circles_is_underfitting_against_the_reference() -> None:
    diag = _linear_on_circles()
    [finding] = _underfitting(diag)
    assert finding.severity == "warning"
    assert finding.evidence["reference_model"] == "boosting"
    assert finding.evidence["reference_loss"] < 0.2  # what the data allows
    assert finding.evidence["train_loss"] > 0.6  # what the linear model got: about chance
    assert finding.evidence["share_of_reference_gain"] < fit.UNDERFIT_SHARE


def test_without_a_reference_underfitting_is_only_a_note_with_the_reason() -> None:
    diag = _linear_on_circles(reference=False)
    assert diag.trace.facts.reference == {"skipped": "turned off"}
    [finding] = _underfitting(diag)
    assert finding.severity == "info"
    assert finding.evidence["reference"] == "no reference: turned off"


def test_reference_reports_loss_accuracy_model_and_time() -> None:
    train, val = noisy_two_class()
    ref = fit_reference(train, val)
    out = ref.to_dict()
    assert set(out) == {"model", "val_loss", "val_accuracy", "seconds", "source", "rows"}
    assert out["model"] in ("logistic", "boosting") and out["rows"] == 1500
    assert 0.6 < out["val_accuracy"] < 0.9 and 0 < out["seconds"] < 10
    assert fit_reference(train, val) is ref  # the same tensors: fitted once
    cv = fit_reference(train)  # no validation data: cross-validated on the training set
    assert cv.source == "3-fold cross-validated training"
    assert abs(cv.val_loss - ref.val_loss) < 0.1  # type: ignore[operator]


def test_regression_reference_is_in_mse_units() -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(600, 5, generator=g)
    y = X @ torch.arange(1.0, 6.0) + 0.5 * torch.randn(600, generator=g)
    ref = fit_reference((X[:400], y[:400]), (X[400:], y[400:]))
    assert ref.model == "ridge" and ref.val_accuracy is None
    assert 0.15 < ref.val_loss < 0.4  # type: ignore[operator]  # the noise variance, 0.25


@pytest.mark.parametrize(
    ("data", "loss_fn", "reason"),
    [
        ((torch.randint(0, 50, (100, 8)), torch.randint(0, 2, (100,))), None, "token ids"),
        ((torch.randn(100, 8), torch.randint(0, 2, (100, 8))), None, "a sequence"),
        ((torch.randn(100, MAX_FEATURES + 1), torch.randint(0, 2, (100,))), None, "features"),
        (
            (torch.randn(100, 8), torch.randint(0, 2, (100,))),
            nn.CrossEntropyLoss(label_smoothing=0.1),
            "not in log-loss or MSE units",
        ),
        ((torch.randn(10, 8), torch.randint(0, 2, (10,))), None, "fewer than"),
    ],
)
def test_reference_is_skipped_with_the_reason(data, loss_fn, reason) -> None:  # type: ignore[no-untyped-def]
    ref = fit_reference(data, loss_fn=loss_fn)
    assert ref.model is None and reason in (ref.skipped or "")
    assert ref.to_dict() == {"skipped": ref.skipped}


def test_reference_travels_with_the_trace(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace = Trace(["fc"], {"fc": "Linear"})
    trace.facts.reference = {"model": "logistic", "val_loss": 0.41, "seconds": 0.3}
    trace.facts.train_metrics = "eval mode"
    loaded = Trace.load(trace.save(tmp_path / "trace"))
    assert loaded.facts.reference == trace.facts.reference
    assert loaded.facts.train_metrics == "eval mode"
    assert trace.to_dict()["facts"]["reference"]["val_loss"] == 0.41


def test_batch_norm_train_metrics_use_batch_statistics_and_restore_running_ones() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    with torch.no_grad():  # running statistics far from the data's, as early in a run
        model[1].running_mean.fill_(50.0)
    X, y = torch.randn(300, 4), torch.randint(0, 2, (300,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss_fn = nn.CrossEntropyLoss()
    eval_loss, _ = evaluate(model, X, y, loss_fn, "classification")
    batch_loss, _ = evaluate(model, X, y, loss_fn, "classification", batch_stats=True)
    assert batch_loss < 2 < eval_loss  # the running statistics are far off; batch ones are not
    assert model.training  # the mode is put back
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # running stats and counters unchanged


def test_underfitting_is_measured_against_the_reference_gain() -> None:
    from test_detectors import _with_evals, make_trace

    def judged(reference_loss: float) -> list[dd.Finding]:
        facts = {"n_classes": 4, "task": "classification"}
        facts["reference"] = {"model": "logistic", "val_loss": reference_loss}  # type: ignore[assignment]
        curve = [1.38, 1.2, 1.1, 1.1, 1.1]
        return fit.detect(_with_evals(make_trace(facts=facts), curve, curve))

    # chance ln 4 = 1.386: the run got 0.29 of it, the reference 0.39 -> 74% of its gain
    assert judged(1.0) == []
    # the reference got 1.09 -> the run made 26% of that gain: underfitting
    (f,) = judged(0.3)
    assert f.kind == "underfitting" and f.severity == "warning"
    assert f.evidence["share_of_reference_gain"] == pytest.approx(0.286 / 1.086, rel=1e-2)
    assert f.evidence["reference_loss"] == 0.3

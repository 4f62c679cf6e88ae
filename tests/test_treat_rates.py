"""lower_lr's rate, cut again while it still blows up (issue 14: divergence that survives the
new rate gets the next rate down)."""

from __future__ import annotations

import pytest
import torch

import deepdoctor as dd
from deepdoctor.presets import sgd
from deepdoctor.remedies import optimization
from deepdoctor.remedies.lr_range import RangeTest
from deepdoctor.treat import treat


def no_suggestion(exp: dd.Experiment, steps: int = 100) -> RangeTest:
    """A range test that proposes no rate: lower_lr falls back to a tenth after divergence."""
    opt = optimization.base_factory(exp)([torch.zeros(1, requires_grad=True)])
    return RangeTest(base_lr=opt.param_groups[0]["lr"], steps=5)


def test_a_rate_that_still_blows_up_is_cut_tenfold_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optimization, "range_test", no_suggestion)
    split = dd.data.load("digits")
    exp = dd.Experiment(
        lambda: dd.models.mlp(64, 10, depth=2, width=32, init="he"),
        split.train,
        split.val,
        optimizer=sgd(60.0),
        steps=60,
        n_classes=10,
    )
    tr = treat(exp, remedies=["lower_lr"], budget=3)
    screens = [t for t in tr.trials if t.stage == "screen"]
    # 60 -> 6, whose loss still rises (to 1e8 at the screen, finite) -> 0.6, which trains
    assert [t.blew_up for t in screens] == [True, False]
    assert "screened next at a tenth" in (screens[0].note or "")
    assert screens[1].status == "kept" and screens[0].status == "no_gain"
    assert tr.applied == ["lower_lr"]
    code = tr.treated.meta["changes"][-1]["code"]
    assert code.startswith("lr = 0.6  # was 60; /10:")
    assert code.endswith("/10 since the run still blew up at that rate")
    Xv, yv = split.val
    tr.model.eval()
    with torch.no_grad():
        accuracy = float((tr.model(Xv).argmax(1) == yv).float().mean())
    # plain PyTorch on the returned model: measured 95.6% (the untreated run: 11.7%)
    assert accuracy == pytest.approx(tr.after["val_accuracy"], abs=1e-6) and accuracy > 0.85

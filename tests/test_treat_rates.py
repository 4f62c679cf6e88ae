"""lower_lr's rate, cut again while it still blows up (issue 14: divergence that survives the
new rate gets the next rate down)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

import deepdoctor as dd
from deepdoctor.presets import sgd
from deepdoctor.remedies import lr_range, optimization
from deepdoctor.remedies.lr_range import RangeTest
from deepdoctor.scoring import Scoring
from deepdoctor.search import Search
from deepdoctor.treat import treat
from deepdoctor.trials import STUCK_STOP, GiveUpWhenStuck, TrialSpec, run_trial


def no_suggestion(exp: dd.Experiment, steps: int = 100) -> RangeTest:
    """A range test that proposes no rate: lower_lr falls back to a tenth after divergence."""
    opt = optimization.base_factory(exp)([torch.zeros(1, requires_grad=True)])
    return RangeTest(base_lr=opt.param_groups[0]["lr"], steps=5)


def blowing_up(split: dd.data.Split, steps: int) -> dd.Experiment:
    """A 2-layer He ReLU MLP at SGD lr 60: its loss blows up."""
    return dd.Experiment(
        lambda: dd.models.mlp(64, 10, depth=2, width=32, init="he"),
        split.train,
        split.val,
        optimizer=sgd(60.0),
        steps=steps,
        n_classes=10,
    )


def test_a_rate_that_still_blows_up_is_cut_tenfold_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lr_range, "range_test", no_suggestion)
    split = dd.data.load("digits")
    exp = blowing_up(split, steps=60)
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


# -- the warmup's length, and one range test shared by the rate remedies ----------------------


def sweep(moved_at: int | None, points: int = 70) -> RangeTest:
    """A range test over 7 decades whose smoothed loss is flat at 2.3, then falls from
    ``moved_at`` on (never, when None)."""
    lrs = [1e-6 * 10 ** (7 * t / (points - 1)) for t in range(points)]
    smoothed = [2.3 if moved_at is None or t < moved_at else 2.0 - 0.01 * t for t in range(points)]
    return RangeTest(base_lr=0.1, lrs=lrs, losses=smoothed, smoothed=smoothed, steps=points)


def test_the_warmup_lasts_the_range_tests_climb_from_the_first_rate_that_moved_the_loss() -> None:
    test = sweep(moved_at=30)
    per_decade = 69 / 7  # the test's own pace: 69 steps over 7 decades
    # two decades above the first rate that moved the loss: 2 x 9.86 = 19.7 steps
    assert test.warmup_steps(test.lrs[30] * 100, 200) == round(2 * per_decade) == 20
    assert test.warmup_steps(test.lrs[30] * 1e6, 200) == 50  # at most a quarter of the run
    assert test.warmup_steps(test.lrs[30], 200) == 4  # at least 2% of it
    assert sweep(moved_at=None).warmup_steps(0.1, 200) is None  # the loss never moved


def test_the_rate_remedies_read_one_range_test_and_treat_charges_it_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exp = blowing_up(dd.data.load("digits"), steps=150)
    calls: list[int] = []
    real = lr_range.range_test

    def counted(e: dd.Experiment, steps: int = 100) -> RangeTest:
        calls.append(steps)
        return real(e, steps)

    monkeypatch.setattr(lr_range, "range_test", counted)
    shared = treat(exp, remedies=["lower_lr", "lr_warmup"], budget=3)
    assert calls == [50]  # one sweep for both remedies (and lower_lr's verification)
    keys = {c.get("range_test") for c in shared.treated.meta["changes"]}
    assert len(keys) == 1 and None not in keys
    # The same treat with every sweep its own: the same trials, one range test more charged.
    calls.clear()
    unique = iter(range(1000))
    monkeypatch.setattr(lr_range, "sweep_key", lambda e, s: f"sweep {next(unique)}")
    alone = treat(exp, remedies=["lower_lr", "lr_warmup"], budget=3)
    assert len(calls) >= 2
    assert [(t.remedies, t.status, t.steps) for t in alone.trials] == [
        (t.remedies, t.status, t.steps) for t in shared.trials
    ]
    assert alone.compute == pytest.approx(shared.compute + 50 / 150, abs=1e-3)


# -- a short screen that learned nothing gives up half way -----------------------------------


def stuck_state(losses: list[float]) -> SimpleNamespace:
    return SimpleNamespace(history=SimpleNamespace(loss=losses), stop=None)


ACCURACY = Scoring("accuracy", 0.1, "the majority class", "balanced classes")


@pytest.mark.parametrize(
    ("step", "accuracy", "losses", "stops"),
    [
        (10, 0.105, [2.30] * 10, True),  # flat loss, score within a point of the trivial 10%
        (10, 0.120, [2.30] * 10, False),  # the score moved: learning, slowly
        (10, 0.105, [2.30] * 5 + [2.20] * 5, False),  # the loss moved by more than 1%
        (9, 0.105, [2.30] * 9, False),  # before half way
        (20, 0.105, [2.30] * 20, False),  # the screen's last evaluation is its result
    ],
)
def test_give_up_when_stuck_needs_both_a_flat_loss_and_a_trivial_score(
    step: int, accuracy: float, losses: list[float], stops: bool
) -> None:
    state = stuck_state(losses)
    metrics = {"step": float(step), "val_loss": 2.3, "val_accuracy": accuracy}
    GiveUpWhenStuck(at=10, end=20, scoring=ACCURACY).on_eval(state, metrics)
    assert (state.stop == STUCK_STOP) is stops


def test_a_flat_negative_loss_has_not_moved() -> None:
    flat = sweep(moved_at=None)
    negative = RangeTest(0.1, flat.lrs, [-1.0] * 70, [-1.0] * 70, steps=70)
    assert negative.warmup_steps(0.1, 200) is None  # -1.0 is not 1% below -1.0
    falling = RangeTest(0.1, flat.lrs, [-1.0] * 30 + [-1.5] * 40, [-1.0] * 30 + [-1.5] * 40)
    assert falling.warmup_steps(falling.lrs[30] * 100, 200) == 20


def test_two_rate_remedies_on_one_sweep_are_charged_it_once() -> None:
    exp = blowing_up(dd.data.load("digits"), steps=150)
    with lr_range.sharing_sweeps():
        alone = run_trial(TrialSpec(exp, ("lower_lr",), steps=2))
        both = run_trial(TrialSpec(exp, ("lower_lr", "lr_warmup"), steps=2))
    assert alone.remedy_steps == both.remedy_steps == 50  # one 50-step sweep
    assert both.sweeps == alone.sweeps and len(both.sweeps) == 1
    search = Search(exp, budget=3)
    assert (search.remedy_charge(alone), search.remedy_charge(both)) == (50, 0)


def test_what_a_sweep_depends_on_is_in_its_key() -> None:
    split = dd.data.load("digits", subset=300)
    exp = blowing_up(split, steps=150).replace(loss_fn=nn.CrossEntropyLoss())
    key = lr_range.sweep_key(exp, 50)
    assert lr_range.sweep_key(exp.replace(optimizer=sgd(0.1)), 50) == key  # the rate is not
    weights = torch.linspace(0.5, 2.0, 10)
    others = [
        exp.replace(loss_fn=nn.CrossEntropyLoss(weight=weights)),  # what class_weights sets
        exp.replace(loss_fn=nn.CrossEntropyLoss(label_smoothing=0.3)),
        exp.replace(model=lambda: frozen_first(dd.models.mlp(64, 10, depth=2, width=32))),
        exp.replace(batch_size=32),
        exp.replace(train=(split.X_train[:200], split.y_train[:200])),
    ]
    keys = [lr_range.sweep_key(other, 50) for other in others]
    assert key not in keys and len(set(keys)) == len(keys)


def frozen_first(model: nn.Module) -> nn.Module:
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    first.requires_grad_(False)
    return model

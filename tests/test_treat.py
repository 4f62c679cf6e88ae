"""treat: the cases it must repair, the healthy one it must leave alone, bad input, the CLI."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import deepdoctor as dd
from deepdoctor.cli import main
from deepdoctor.presets import get_preset, sgd
from deepdoctor.remedies import REMEDIES, Context, apply_remedies
from deepdoctor.remedies.base import Remedy
from deepdoctor.scoring import MIN_GAIN_ACCURACY
from deepdoctor.search import BudgetError, Ledger
from deepdoctor.treat import STATUSES, Treatment, treat

REGULARISATION = {"dropout", "weight_decay", "early_stopping", "data_augmentation"}


def kinds(findings: list[dd.Finding]) -> set[str]:
    return {f.kind for f in findings if f.is_problem}


def diverging_mlp(steps: int = 200) -> dd.Experiment:
    """20-layer ReLU MLP, He init, SGD lr 0.3 with momentum 0.9: blows up within 15 steps."""
    split = dd.data.load("digits")
    return dd.Experiment(
        lambda: dd.models.mlp(64, 10, depth=20, width=64, init="he"),
        split.train,
        split.val,
        optimizer=sgd(0.3, momentum=0.9),
        steps=steps,
        n_classes=split.n_classes,
        name="diverging-relu-mlp20",
    )


@pytest.fixture(scope="module")
def sigmoid50() -> Treatment:
    return treat(get_preset("sigmoid-mlp50-digits"))


@pytest.fixture(scope="module")
def diverging() -> Treatment:
    return treat(diverging_mlp())


@pytest.fixture(scope="module")
def overfit() -> Treatment:
    return treat(get_preset("overfitting-noisy-digits"))


# -- the cases of issue 6 -------------------------------------------------------------------


def test_the_broken_50_layer_sigmoid_mlp_is_treated_to_90_percent(sigmoid50: Treatment) -> None:
    tr = sigmoid50
    assert tr.before["val_accuracy"] < 0.2  # measured 10.3%: chance
    assert tr.after["val_accuracy"] >= 0.90  # measured 94.7%; 95.3-95.6% at seeds 0-2 here
    assert tr.applied == ["residual"]
    assert tr.compute <= 3.0
    assert "vanishing_gradients" in kinds(tr.findings_before)
    assert "vanishing_gradients" not in kinds(tr.findings)
    # The still_improving detector of d56aed0 finds the treated run still learning (it is: 300
    # steps of a 50-layer net): what may remain, and all that may.
    assert not tr.interrupted and set(tr.remaining) <= {"still_improving"}
    assert tr.message.startswith(
        f"{tr.verdict}: residual kept: accuracy 0.103 -> 0.9"
    ) and tr.verdict == ("partly repaired" if tr.remaining else "repaired")
    kept = [t for t in tr.trials if t.kept]
    assert [t.stage for t in kept] == ["screen", "verify"]
    assert kept[-1].steps == 300 and kept[-1].metrics == tr.after
    # the treated model is the verified one: its accuracy is the reported one
    X, y = tr.experiment.val
    tr.model.eval()
    with torch.no_grad():
        accuracy = (tr.model(X).argmax(1) == y).float().mean().item()
    assert accuracy == pytest.approx(tr.after["val_accuracy"])


def test_the_diverging_relu_mlp_is_treated_and_the_blowup_is_gone(diverging: Treatment) -> None:
    tr = diverging
    assert {"diverging_loss", "exploding_gradients"} <= kinds(tr.findings_before)
    # the blow-up stopped the run before its first evaluation (step 20): treat evaluated it
    assert tr.history_before is not None and tr.history_before.stopped == "loss_blowup"
    assert tr.history_before.steps < tr.experiment.eval_every == 20  # measured: 15
    assert tr.before["val_accuracy"] == pytest.approx(0.1) and tr.before["val_loss"] > 100
    assert tr.applied == ["lower_lr"]
    assert not kinds(tr.findings) & {"nonfinite", "exploding_gradients"}
    # On the 2026-12 machine the treated loss still rose late (0.80 -> 1.79: diverging_loss at
    # warning, 52.2%); on the earlier one it did not: no critical divergence either way.
    assert not [f for f in tr.findings if f.kind == "diverging_loss" and f.severity == "critical"]
    # Trained accuracies differ between CPUs (kernels differ): this run measured 46.7% here and
    # 63.3% on another machine, 91.1% and 64.2% at seeds 1 and 2 here (val loss 1.32, 0.71,
    # 0.90). Asserted: the blow-up is gone and the model is well clear of chance (10%).
    assert tr.after["val_accuracy"] > tr.before["val_accuracy"] + 0.15
    assert tr.after["val_loss"] < 2.0  # below ln 10 = 2.30, a uniform guess; was > 100
    assert tr.history_after is not None and tr.history_after.stopped == "completed"
    opt = tr.treated.optimizer(tr.model.parameters())
    # lower_lr takes the learning-rate range test's rate: measured 0.01233 (val 87.8%; the old
    # /10 rule's 0.03 gave 46.7%); at seeds 1 and 2 0.0034 (+ gradient_clipping, 64.4%) and
    # 0.0064 (88.9%)
    assert 1e-3 < opt.param_groups[0]["lr"] < 0.03
    assert tr.treated.meta["changes"][-1]["steps"] < 100  # the range test's cost, measured 85
    assert tr.compute <= 3.0


def test_screens_that_learned_nothing_half_way_give_up_there(
    diverging: Treatment,
) -> None:
    screens = {tuple(t.remedies): t for t in diverging.trials if t.stage == "screen" and t.steps}
    given_up = [t for t in screens.values() if "given up after 20 of 40 steps" in (t.note or "")]
    # measured: gradient_clipping and xavier_init at 10.3% with the loss at ln 10 after 20 steps
    # (37 of 360: the majority class, the trivial predictor's score). A fixed 0.11 sat 2.6
    # samples above that and below the give-up rule's own bar, trivial + the minimum gain
    # (0.113), which a stuck screen may reach on another CPU; one above the bar learned.
    assert len(given_up) >= 2
    bar = diverging.scoring["trivial"] + MIN_GAIN_ACCURACY
    assert all(t.steps == 20 and t.status == "no_gain" and t.score <= bar for t in given_up)
    # lower_lr starts slowly by design and runs its whole screen
    assert screens[("lower_lr",)].steps == 40


def test_a_healthy_model_gets_no_remedy() -> None:
    tr = treat(get_preset("healthy-mlp-digits"))
    assert tr.applied == [] and tr.trials == []
    assert tr.message == "healthy: the untreated run is healthy: no remedy applied"
    assert tr.verdict == "healthy" and tr.remaining == []
    assert tr.compute == 1.0
    assert tr.after == tr.before and tr.before["val_accuracy"] > 0.95
    assert tr.treated is tr.experiment and tr.snippet() == "# deepdoctor treat: no change\n"


def test_an_overfitting_model_is_regularised_and_its_validation_loss_falls(
    overfit: Treatment,
) -> None:
    tr = overfit
    assert "overfitting" in kinds(tr.findings_before)
    assert tr.applied and set(tr.applied) <= REGULARISATION
    # measured at seeds 0-2: val loss 2.04 -> 0.83, 2.14 -> 0.81, 2.05 -> 0.81 (x0.38-0.41);
    # accuracy 61.4% -> 79.2%, 58.3% -> 82.2%, 59.2% -> 81.1% (+18 to +24 points)
    assert tr.after["val_loss"] < 0.6 * tr.before["val_loss"]
    assert tr.after["val_accuracy"] > tr.before["val_accuracy"] + 0.1
    assert tr.compute <= 3.0
    # Regularisation is screened over the full run, which then needs no second run: the
    # kept trial is that screen, scored by the best weights early stopping returns.
    (kept,) = [t for t in tr.trials if t.kept]
    assert kept.stage == "screen" and kept.metrics == tr.after
    assert tr.history_after is not None and tr.history_after.best_step is not None
    best = [e for e in tr.history_after.evals if e["step"] == tr.history_after.best_step]
    assert best[0]["val_loss"] == tr.after["val_loss"] == min(tr.history_after.metric("val_loss"))


# -- the ledger and the trials --------------------------------------------------------------


def test_the_ledger_knows_the_budget_what_is_spent_and_left_and_refuses_what_does_not_fit() -> None:
    ledger = Ledger(budget=2.0, run_steps=300)
    ledger.charge("baseline", 300)
    ledger.charge("noise run", 60)
    assert (ledger.spent, ledger.left, ledger.compute) == (1.2, 0.8, 1.2)
    assert ledger.fits(0.8) and not ledger.fits(0.81)
    assert ledger.shortfall(1.2, "this screen and its verification need") == (
        "the budget left (0.8 runs) is less than this screen and its verification need (1.2 runs)"
    )
    with pytest.raises(BudgetError, match=r"screen adam: the budget left \(0\.8 runs\)"):
        ledger.charge("screen adam", 300)
    assert ledger.spent == 1.2


def test_compute_is_every_run_the_ledger_charged(sigmoid50: Treatment, overfit: Treatment) -> None:
    # No run here stops early: the baseline (1 run) and the noise run (0.2) plus the trials.
    for tr in (sigmoid50, overfit):
        trials = sum(t.steps for t in tr.trials) / tr.experiment.steps
        assert tr.compute == pytest.approx(1.0 + 0.2 + trials, abs=1e-3) and tr.compute <= 3.0


def test_trials_carry_a_status_a_round_and_a_reason_in_words(sigmoid50: Treatment) -> None:
    statuses = [(t.stage, t.status) for t in sigmoid50.trials]
    # relu_activation+he_init: 12.2% at the screen against 10.0% on the 2026-12 machine (passed
    # by 0.2 points over the margin), below it on the earlier one: either way, not kept
    assert statuses[0] in (("screen", "no_gain"), ("screen", "passed"))
    statuses[0] = ("screen", "no_gain")
    assert statuses == [
        ("screen", "no_gain"),  # relu_activation+he_init
        ("screen", "no_gain"),  # he_init
        ("screen", "passed"),  # batch_norm
        ("screen", "kept"),  # residual
        ("screen", "not_tried"),  # adam: no room left for its verification
        ("screen", "not_tried"),  # raise_lr
        ("screen", "not_tried"),  # more_capacity: the 7th remedy set
        ("screen", "not_tried"),  # train_longer
        ("combine", "not_tried"),  # batch_norm+residual
        ("verify", "kept"),
    ]
    reasons = {t.reason for t in sigmoid50.trials if t.status == "not_tried"}
    # What was left: 3 runs less the baseline, the noise run and the four screens that ran
    # (relu_activation+he_init's screen gives up half way on some CPUs: 1.1 runs left, else 1)
    ran = sum(t.steps for t in sigmoid50.trials if t.stage == "screen")
    left = f"{3.0 - 1.2 - ran / sigmoid50.experiment.steps:.3g}"
    left = "1 run" if left == "1" else f"{left} runs"
    assert reasons == {
        f"the budget left ({left}) is less than this screen and its verification need (1.2 runs)",
        # raise_lr's range test (100 of the run's 300 steps) counted before it is applied
        f"the budget left ({left}) is less than this screen and its verification need (1.53 runs)",
        "treat screens at most 6 remedy sets a round, best-ranked first",
    }
    assert all(
        t.round == 1 and (t.reason is None) == (t.status != "not_tried") for t in sigmoid50.trials
    )
    dumped = sigmoid50.to_dict()["trials"]
    assert [(t["stage"], t["status"]) for t in dumped] == [
        (t.stage, t.status) for t in sigmoid50.trials
    ]
    assert {t["round"] for t in dumped} == {1} and all(t["status"] in STATUSES for t in dumped)
    assert dumped[4]["reason"] == sigmoid50.trials[4].reason and dumped[4]["error"] is None
    assert [t["passed"] for t in dumped[1:4]] == [False, True, True]


# -- bad input ------------------------------------------------------------------------------


def small_sigmoid(steps: int = 50) -> dd.Experiment:
    return get_preset("sigmoid-mlp50-digits").replace(steps=steps)


@pytest.mark.parametrize("budget", [0.99, 0, -1])
def test_a_budget_below_one_run_is_refused_with_the_minimum(budget: float) -> None:
    with pytest.raises(
        ValueError, match=r"too small to run even the untreated baseline: the minimum is 1\.0"
    ):
        treat(small_sigmoid(), budget=budget)


def test_a_budget_of_one_run_gives_the_baseline_only() -> None:
    tr = treat(small_sigmoid(), budget=1.0)
    assert tr.applied == [] and tr.compute == 1.0 and math.isnan(tr.noise)
    assert tr.trials and all(t.steps == 0 and t.status == "not_tried" for t in tr.trials)
    assert tr.trials[0].reason == (
        "the budget left (0 runs) is less than this screen and its verification need (1.2 runs)"
    )
    assert tr.trials[-1].reason == "treat screens at most 6 remedy sets a round, best-ranked first"
    assert all(t.error is None and t.round == 1 for t in tr.trials)
    assert tr.message.startswith("not repaired: no remedy beat the untreated run")


def unseeded_generator() -> nn.Module:
    g = torch.Generator()
    g.seed()  # a fresh non-deterministic seed
    model = nn.Linear(64, 10)
    with torch.no_grad():
        model.weight.copy_(torch.randn(10, 64, generator=g))
    return model


def time_seeded() -> nn.Module:
    torch.manual_seed(time.perf_counter_ns())
    return nn.Linear(64, 10)


@pytest.mark.parametrize("builder", [unseeded_generator, time_seeded])
def test_a_nondeterministic_builder_is_detected(builder: Callable[[], nn.Module]) -> None:
    split = dd.data.load("digits")
    exp = dd.Experiment(builder, split.train, split.val, steps=10, name="random-net")
    with pytest.raises(ValueError, match="the model builder of 'random-net' is not deterministic"):
        treat(exp)


def test_a_remedy_that_throws_is_recorded_and_the_search_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def boom(exp: dd.Experiment, ctx: Context) -> dd.Experiment:
        raise RuntimeError("boom")

    monkeypatch.setitem(REMEDIES, "he_init", Remedy("he_init", "init", "throws", boom))
    tr = treat(small_sigmoid(), remedies=["he_init", "residual"])
    assert tr.trials[0].remedies == ["he_init"] and tr.trials[0].status == "error"
    assert tr.trials[0].error == "RuntimeError: boom"
    assert tr.trials[0].steps == 0 and not tr.trials[0].passed
    assert tr.applied == ["residual"] and tr.after["val_accuracy"] > 0.6  # 91.4-91.9%, seeds 0-2


def interrupting(exp: dd.Experiment, ctx: Context) -> dd.Experiment:
    """A candidate whose first training batch raises KeyboardInterrupt, as Ctrl-C would."""

    def ctrl_c(x: torch.Tensor) -> torch.Tensor:
        raise KeyboardInterrupt

    return exp.replace(augment=ctrl_c)


def test_ctrl_c_during_screening_returns_the_untreated_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(REMEDIES, "adam", Remedy("adam", "optimization", "Ctrl-C", interrupting))
    tr = treat(small_sigmoid(), remedies=["adam", "residual"])
    assert tr.interrupted and tr.applied == []
    assert tr.message == "not repaired: interrupted: returning the untreated run"
    assert tr.trials == []  # residual was never screened
    assert tr.after == tr.before and tr.compute == 1.2  # baseline + the noise run


def test_ctrl_c_keeps_the_best_verified_result_so_far(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REMEDIES, "adam", Remedy("adam", "optimization", "Ctrl-C", interrupting))
    tr = treat(get_preset("overfitting-noisy-digits"), remedies=["early_stopping", "adam"])
    assert tr.interrupted and tr.applied == ["early_stopping"]
    assert tr.message.startswith(
        "partly repaired: interrupted: keeping early_stopping, verified over the full run"
    )
    assert tr.after["val_loss"] < tr.before["val_loss"]


# -- a model and its data, like diagnose ----------------------------------------------------


def diverging_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model and optimizer diverging_mlp builds, as a user holds them."""
    torch.manual_seed(0)
    model = dd.models.mlp(64, 10, depth=20, width=64, init="he")
    return model, torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)


def outcome(tr: Treatment) -> tuple[object, ...]:
    trials = [(t.remedies, t.stage, t.status, t.steps, t.score, t.metrics) for t in tr.trials]
    return tr.applied, tr.before, tr.after, tr.compute, tr.noise, tr.message[:40], trials


def test_a_model_and_its_data_are_treated_as_the_same_experiment() -> None:
    # Remedies that draw no random numbers: the copies start from the same weights.
    remedies = ["gradient_clipping", "lower_lr"]
    split = dd.data.load("digits")
    model, opt = diverging_model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    # budget 5: lower_lr's range test (up to 100 steps) is charged, and these runs are 60
    tr = treat(model, split.train, split.val, optimizer=opt, steps=60, remedies=remedies, budget=5)
    assert outcome(tr) == outcome(treat(diverging_mlp(steps=60), remedies=remedies, budget=5))
    assert tr.applied == ["lower_lr"] and tr.experiment.steps == 60
    # the user's model and optimizer are untouched; the optimizer became a factory of its kind
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items()) and not opt.state
    made = tr.experiment.optimizer(nn.Linear(2, 2).parameters())
    assert type(made) is torch.optim.SGD and made.defaults == opt.defaults
    assert made.param_groups[0]["momentum"] == 0.9


def test_the_model_is_snapshot_when_treat_is_called() -> None:
    split = dd.data.load("digits", subset=200)
    model = dd.models.mlp(64, 10, depth=2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    tr = treat(model, split.train, steps=5, budget=1.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # changed after the call: the runs start from the state at the call
    built = tr.experiment.build()
    assert built is not model and tr.experiment.build() is not built
    assert all(torch.equal(v, start[k]) for k, v in built.state_dict().items())
    assert (tr.experiment.steps, tr.experiment.seed, tr.experiment.batch_size) == (5, 0, 64)


def test_settings_given_to_treat_override_the_experiments() -> None:
    exp = get_preset("healthy-mlp-digits")
    loss = nn.CrossEntropyLoss(label_smoothing=0.1)
    opt = torch.optim.Adam(nn.Linear(2, 2).parameters(), lr=0.01)
    tr = treat(exp, steps=20, seed=3, batch_size=32, loss_fn=loss, optimizer=opt, budget=1.0)
    used = tr.experiment
    assert (used.steps, used.seed, used.batch_size, used.loss_fn) == (20, 3, 32, loss)
    made = used.optimizer(nn.Linear(2, 2).parameters())
    assert type(made) is torch.optim.Adam and made.defaults["lr"] == 0.01
    assert tr.history_before is not None and tr.history_before.steps == 20
    assert (exp.steps, exp.seed, exp.batch_size) == (get_preset("healthy-mlp-digits").steps, 0, 64)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: treat("preset:healthy-mlp-digits"),
            "treat takes an nn.Module (with its training data) or a deepdoctor.Experiment, got str",
        ),
        (
            lambda: treat(lambda: nn.Linear(64, 10)),
            "got function; a model builder goes in dd.Experiment(builder, train)",
        ),
        (lambda: treat(nn.Linear(64, 10)), "treat(model, train) needs the training data"),
        (
            lambda: treat(small_sigmoid(), 3),
            "treat(experiment, ...) trains on the experiment's own data, so train and val must "
            "not be given (got int); pass the budget as budget=",
        ),
    ],
)
def test_a_wrong_first_argument_says_what_was_given_and_what_is_accepted(
    call: Callable[[], object], message: str
) -> None:
    with pytest.raises(TypeError, match=re.escape(message)):
        call()


def test_an_optimizer_with_several_parameter_groups_asks_for_a_factory() -> None:
    split = dd.data.load("digits", subset=200)
    model = dd.models.mlp(64, 10, depth=2)
    weights = [p for p in model.parameters() if p.ndim > 1]
    biases = [p for p in model.parameters() if p.ndim == 1]
    opt = torch.optim.SGD([{"params": weights}, {"params": biases, "lr": 0.01}], lr=0.1)
    with pytest.raises(ValueError, match="the SGD optimizer has 2 parameter groups"):
        treat(model, split.train, optimizer=opt)
    other = torch.optim.SGD(nn.Linear(64, 10).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="build the optimizer from model.parameters()"):
        treat(model, split.train, optimizer=other)


# -- outputs --------------------------------------------------------------------------------


def test_to_dict_is_strict_json(diverging: Treatment, sigmoid50: Treatment) -> None:
    for tr in (diverging, sigmoid50):
        out = json.loads(json.dumps(tr.to_dict(), allow_nan=False))
        assert out["applied"] == tr.applied and out["compute"] == tr.compute
        assert len(out["trials"]) == len(tr.trials)
    # -inf scores of blown-up trials become null
    dumped = diverging.to_dict()
    assert any(t["score"] is None and t["steps"] > 0 for t in dumped["trials"])


def test_snippet_holds_the_code_of_the_applied_remedies(
    diverging: Treatment, sigmoid50: Treatment, overfit: Treatment
) -> None:
    # measured: lr = 0.01233
    assert re.fullmatch(
        r"# deepdoctor treat: lower_lr\n# lower_lr\n"
        r"lr = 0\.0\d+  # was 0\.3; from a learning-rate range test\n",
        diverging.snippet(),
    )
    assert "x = x + (g / n ** 0.5) * block(x)" in sigmoid50.snippet()
    assert "# stop after 3 evaluations without a better val loss" in overfit.snippet()
    for tr in (diverging, sigmoid50, overfit):
        compile(tr.snippet(), "changes.py", "exec")


def test_cli_treat_writes_model_snippet_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "treat"
    code = main(["treat", "preset:sigmoid-mlp50-digits", "--steps", "50", "--out", str(out)])
    printed = capsys.readouterr().out
    report = json.loads((out / "treatment.json").read_text())
    # repaired: the gated skips leave no warning behind but, after 50 steps, still_improving
    # (d56aed0's detector), which makes the exit code 1
    assert set(report["remaining"]) <= {"still_improving"}
    assert code == (1 if report["remaining"] else 0)
    assert "repaired: residual kept" in printed and "before / after" in printed
    assert report["applied"] == ["residual"] and report["experiment"]["steps"] == 50
    assert report["healthy"] == (not report["remaining"])
    assert any(f["severity"] != "info" for f in report["findings_before"])
    # measured 9.7% -> 91.9% (91.4% at seeds 1 and 2)
    assert report["after"]["val_accuracy"] > 0.6 > 0.2 > report["before"]["val_accuracy"]
    assert (out / "report.html").stat().st_size > 10_000
    snippet = (out / "changes.py").read_text()
    compile(snippet, "changes.py", "exec")
    assert "x = x + (g / n ** 0.5) * block(x)" in snippet
    # the saved weights fit the treated architecture, rebuilt from the applied remedies
    exp = get_preset("sigmoid-mlp50-digits")
    ctx = Context(example=exp.train[0][:8])
    model = apply_remedies(exp, report["applied"], ctx).build()
    state = torch.load(out / "treated_model.pt", weights_only=True)
    model.load_state_dict(state)
    X, y = exp.val
    model.eval()
    with torch.no_grad():
        accuracy = (model(X).argmax(1) == y).float().mean().item()
    assert math.isclose(accuracy, report["after"]["val_accuracy"], rel_tol=1e-6)


def test_cli_treat_refuses_a_small_budget(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["treat", "preset:healthy-mlp-digits", "--budget", "0.5"]) == 2
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert "budget 0.5 is too small to run even the untreated baseline: the minimum is 1.0" in err


def test_clipping_on_most_steps_makes_treat_screen_lower_lr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The Tuning Playbook: clipping on more than half the steps means the learning rate is
    # too high. Clip at the 1st percentile of the norms so that almost every step clips.
    import deepdoctor.remedies.optimization as optimization

    monkeypatch.setattr(optimization, "CLIP_PERCENTILE", 1)
    exp = get_preset("healthy-mlp-digits").replace(steps=50)
    tr = treat(exp, remedies=["gradient_clipping", "adam"])
    screens = [t for t in tr.trials if t.stage == "screen"]
    assert [t.remedies for t in screens] == [["gradient_clipping"], ["lower_lr"], ["adam"]]
    assert screens[0].note is not None and "learning rate is too high" in screens[0].note
    assert tr.to_dict()["trials"][0]["note"] == screens[0].note


def test_a_larger_budget_treats_the_treated_run_again() -> None:
    # Greedy rounds: lower_lr (from a range test) repairs the diverging MLP in round 1
    # (measured 10.0% -> 61.7% here); round 2 starts from that verified run, at no cost, and
    # its findings name nothing more (before the range test, /10 left it at 46.7% and round 2
    # added batch_norm).
    # On the 2026-12 machine the treated run (52.2%) still diverged late at warning, so round 2
    # screened lower_lr again (the next rate down), clipping, warmup and Adam, and kept none.
    tr = treat(get_preset("diverging-relu-mlp20-digits"), budget=6)
    assert tr.rounds == 2 and tr.applied == ["lower_lr"]
    assert [t.round for t in tr.trials] == sorted(t.round for t in tr.trials)
    assert {t.stage for t in tr.trials} <= {"screen", "combine", "verify"}
    assert not [t for t in tr.trials if t.round == 2 and t.kept]
    assert "round 2: " in tr.message
    assert tr.after["val_accuracy"] > tr.before["val_accuracy"] + 0.3
    assert 1.0 < tr.compute <= 6.0
    assert tr.to_dict()["rounds"] == 2

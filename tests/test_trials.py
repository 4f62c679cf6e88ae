"""Where treat's trials run (in-process, worker processes, Ray), the trial cache, and resuming
an interrupted treat from it."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import deepdoctor as dd
from deepdoctor import training
from deepdoctor.remedies import REMEDIES, Context, apply_remedies
from deepdoctor.remedies.base import Remedy, record_change
from deepdoctor.treat import Treatment, treat
from deepdoctor.treated_code import write_apply_files
from deepdoctor.trials import TrialSpec, run_trial, trial_key


def exploding_mlp(steps: int = 100) -> dd.Experiment:
    """A 4-layer He-initialised ReLU MLP at SGD lr 0.5, momentum 0.9: its loss blows up.
    Builder and optimizer are picklable (a BuilderSpec and a partial), so worker processes
    can receive it."""
    split = dd.data.load("digits")
    return dd.Experiment(
        dd.models.spec("mlp", in_features=64, n_classes=10, depth=4, width=32, init="he"),
        split.train,
        split.val,
        optimizer=functools.partial(torch.optim.SGD, lr=0.5, momentum=0.9),
        steps=steps,
        n_classes=split.n_classes,
        name="exploding-mlp6",
    )


# lower_lr's range test, a short screen, a structural change and a late-effect remedy (a
# full-length, probed screen): every kind of trial the engine runs.
REMEDY_MIX = ["lower_lr", "gradient_clipping", "batch_norm", "dropout"]
# room for the full-length screen beside a passed short screen's verification
MIX_BUDGET = 4.0


def outcome(tr: Treatment) -> tuple[Any, ...]:
    trials = [(t.remedies, t.stage, t.status, t.steps, t.score, t.metrics) for t in tr.trials]
    weights = [(k, v.tolist()) for k, v in tr.model.state_dict().items()]
    return tr.applied, tr.before, tr.after, tr.compute, tr.noise, tr.message[:60], trials, weights


@pytest.fixture(scope="module")
def in_process() -> Treatment:
    return treat(exploding_mlp(), remedies=REMEDY_MIX, budget=MIX_BUDGET)


def test_the_in_process_treat_exercises_every_kind_of_trial(in_process: Treatment) -> None:
    ran = {tuple(t.remedies): t for t in in_process.trials if t.steps}
    assert ran[("lower_lr",)].steps == 20  # after its range test
    assert ran[("dropout",)].steps > 20  # full-length and probed (it stops at the blow-up)
    assert any(t.stage == "verify" for t in in_process.trials) and in_process.applied
    assert math.isfinite(in_process.noise)


def test_worker_processes_give_the_same_numbers_to_the_last_digit(in_process: Treatment) -> None:
    assert outcome(
        treat(exploding_mlp(), remedies=REMEDY_MIX, budget=MIX_BUDGET, workers=2)
    ) == outcome(in_process)


def test_ray_gives_the_same_numbers_to_the_last_digit(in_process: Treatment) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = treat(exploding_mlp(), remedies=REMEDY_MIX, budget=MIX_BUDGET, ray=True)
    finally:
        ray.shutdown()
    assert outcome(on_ray) == outcome(in_process)


def test_a_trial_is_a_pure_function_of_its_spec() -> None:
    exp = exploding_mlp(steps=20)
    ctx = Context(example=exp.train[0][:8])
    spec = TrialSpec(exp, ("batch_norm",), ctx, seed=1, steps=10)
    a, b = run_trial(spec), run_trial(spec)
    assert a.status == b.status == "ran" and a.metrics == b.metrics and a.history.steps == 10
    same = TrialSpec(exploding_mlp(steps=20), ("batch_norm",), ctx, seed=1, steps=10)
    assert trial_key(spec) == trial_key(same)  # a fresh but equal experiment
    # The key changes with each thing the trial depends on.
    others = [
        TrialSpec(exp, ("layer_norm",), ctx, seed=1, steps=10),
        TrialSpec(exp, ("batch_norm",), ctx, seed=2, steps=10),
        TrialSpec(exp, ("batch_norm",), ctx, seed=1, steps=11),
        TrialSpec(exp.replace(batch_size=32), ("batch_norm",), ctx, seed=1, steps=10),
        TrialSpec(exp.replace(val=(exp.val[0] + 1, exp.val[1])), ("batch_norm",), ctx, 1, 10),
    ]
    assert len({trial_key(spec), *(trial_key(s) for s in others)}) == 6


# -- bad input ------------------------------------------------------------------------------


def test_workers_refuse_a_builder_that_cannot_be_pickled() -> None:
    exp = exploding_mlp().replace(model=lambda: dd.models.mlp(64, 10, depth=2))
    with pytest.raises(ValueError, match=r"its model builder '.*<lambda>' cannot be pickled"):
        treat(exp, workers=2)


def count_training_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every training run (screens, range tests, probed runs) counted where it starts."""
    runs: list[int] = []
    start = training._Run.__init__

    def counted(self: Any, *args: Any, **kwargs: Any) -> None:
        runs.append(1)
        start(self, *args, **kwargs)

    monkeypatch.setattr(training._Run, "__init__", counted)
    return runs


def test_an_unreachable_ray_address_is_named_and_nothing_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs = count_training_runs(monkeypatch)
    with pytest.raises(ConnectionError, match=r"cannot reach a Ray cluster at 127\.0\.0\.1:1 "):
        treat(exploding_mlp(), ray="127.0.0.1:1")
    assert runs == []


# -- an interrupted treat resumes from the cache --------------------------------------------


def slow_mlp(steps: int = 60) -> dd.Experiment:
    """A 2-layer MLP at SGD lr 0.003: far from trained after 60 steps."""
    split = dd.data.load("digits")
    return dd.Experiment(
        dd.models.spec("mlp", in_features=64, n_classes=10, depth=2, width=32, init="he"),
        split.train,
        split.val,
        optimizer=functools.partial(torch.optim.SGD, lr=0.003),
        steps=steps,
        n_classes=split.n_classes,
        name="slow-mlp2",
    )


def faster(exp: dd.Experiment, ctx: Context) -> dd.Experiment:
    """Stands in for a late-effect remedy (screened over the full run, so verified): lr x30."""
    optimizer = functools.partial(torch.optim.SGD, lr=0.09)
    return record_change(exp, "weight_decay", "lr = 0.09", optimizer=optimizer)


def test_an_interrupted_treat_keeps_the_best_verified_and_resumes_without_rerunning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    presses: list[int] = []

    def ctrl_c_once(exp: dd.Experiment, ctx: Context) -> dd.Experiment:
        presses.append(1)
        if len(presses) == 1:
            raise KeyboardInterrupt  # Ctrl-C while the third trial is being prepared
        return record_change(exp, "adam", "# nothing", steps=exp.steps)

    monkeypatch.setitem(REMEDIES, "weight_decay", Remedy("weight_decay", "r", "lr x30", faster))
    monkeypatch.setitem(REMEDIES, "adam", Remedy("adam", "o", "Ctrl-C once", ctrl_c_once))
    remedies = ["weight_decay", "gradient_clipping", "adam", "lr_warmup"]
    runs = count_training_runs(monkeypatch)
    cache = tmp_path / "trials"

    first = treat(slow_mlp(), remedies=remedies, cache=cache, budget=5)
    assert first.interrupted and first.applied == ["weight_decay"]
    assert "interrupted: keeping weight_decay, verified over the full run" in first.message
    assert first.after["val_accuracy"] > first.before["val_accuracy"] + 0.2
    # baseline, noise run, weight_decay (full run) and gradient_clipping (short screen)
    assert len(runs) == 4 and len(list(cache.glob("*.pkl"))) == 4
    first.save(tmp_path / "out")
    assert (tmp_path / "out" / "treatment.json").is_file()

    runs.clear()
    second = treat(slow_mlp(), remedies=remedies, cache=cache, budget=5)
    # only adam and lr_warmup ran (lr_warmup after the range test that sets its length)
    assert not second.interrupted and len(runs) == 3
    assert [t.cached for t in second.trials] == [True, True, False, False]
    assert [(t.remedies, t.metrics) for t in second.trials[:2]] == [
        (t.remedies, t.metrics) for t in first.trials
    ]
    assert second.applied == ["weight_decay"] and second.after == first.after


# -- what a user applies: changes.py, treated_model.pt, input_scaling.pt --------------------

APPLY_CHECK = """
import sys, torch
from pathlib import Path
import runpy
for directory in sys.argv[1:]:
    d = Path(directory)
    ns = runpy.run_path(str(d / "changes.py"))
    builder = torch.load(d / "builder.pt") if (d / "builder.pt").exists() else None
    if builder is None:
        model, fresh = ns["load_treated"](), ns["build_treated"]()
    else:
        try:
            ns["build_treated"]()
        except TypeError as exc:
            (d / "refused.txt").write_text(str(exc))
        make = lambda: __import__("deepdoctor").models.mlp(**builder)
        model, fresh = ns["load_treated"](make), ns["build_treated"](make)
    batch = torch.load(d / "batch.pt")
    with torch.no_grad():
        out = model(ns["prepare_inputs"](batch))
    torch.save({"out": out, "fresh": fresh.state_dict()}, d / "check.pt")
"""


def apply_in_fresh_process(*directories: Path) -> None:
    """Run each written changes.py in a new interpreter: load_treated() on a raw batch."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(dd.__file__).parents[1])}
    cmd = [sys.executable, "-c", APPLY_CHECK, *map(str, directories)]
    subprocess.run(cmd, check=True, env=env, cwd=directories[0], timeout=300)


def trained_candidate(builder: Any, remedies: list[str]) -> tuple[dd.Experiment, dd.Experiment]:
    """The untreated experiment (digits on the 0-16 pixel scale) and a treated one, trained."""
    split = dd.data.load("digits")
    exp = dd.Experiment(
        builder,
        (split.train[0] * 16, split.train[1]),
        (split.val[0] * 16, split.val[1]),
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        steps=20,
        seed=3,
    )
    ctx = Context(example=exp.train[0][:8], grad_norms=np.ones(10))
    return exp, apply_remedies(exp, remedies, ctx)


def test_changes_py_rebuilds_the_treated_model_and_its_inputs_in_a_fresh_process(
    in_process: Treatment, tmp_path: Path
) -> None:
    spec = dd.models.spec(
        "mlp", in_features=64, n_classes=10, depth=3, width=32, activation="sigmoid"
    )
    many = ["standardize_inputs", "batch_norm", "leaky_relu_activation", "residual", "he_init"]
    cases = {
        "spec": (*trained_candidate(spec, [*many, "gradient_clipping"]), None),
        "lambda": (
            *trained_candidate(lambda: dd.models.mlp(64, 10, depth=2, width=16), ["layer_norm"]),
            {"in_features": 64, "n_classes": 10, "depth": 2, "width": 16},
        ),
    }
    models = {}
    for name, (exp, treated, builder) in cases.items():
        d = tmp_path / name
        models[name] = treated.build()
        treated.run(model=models[name])
        write_apply_files(treated, models[name], d, f"case {name}")
        torch.save(exp.val[0][:64], d / "batch.pt")  # raw inputs, as the user holds them
        if builder is not None:
            torch.save(builder, d / "builder.pt")
    in_process.save(tmp_path / "treat")
    torch.save(in_process.experiment.val[0][:64], tmp_path / "treat" / "batch.pt")
    apply_in_fresh_process(*(tmp_path / n for n in [*cases, "treat"]))

    for name, (_, treated, _) in cases.items():
        check = torch.load(tmp_path / name / "check.pt")
        with torch.no_grad():
            expected = models[name].eval()(treated.val[0][:64])  # the scaled inputs it trained on
        assert torch.equal(check["out"], expected)
        initial = treated.build().state_dict()
        assert all(torch.equal(check["fresh"][k], initial[k]) for k in initial)
    assert (
        "gradient_clipping: torch.nn.utils.clip_grad_norm_"
        in (tmp_path / "spec" / "changes.py").read_text()
    )
    assert (
        (tmp_path / "lambda" / "refused.txt")
        .read_text()
        .startswith("treat was given a builder of experiment that cannot be named here")
    )
    check = torch.load(tmp_path / "treat" / "check.pt")
    with torch.no_grad():
        assert torch.equal(check["out"], in_process.model.eval()(in_process.treated.val[0][:64]))


def test_treatment_save_writes_the_files_the_cli_writes(
    in_process: Treatment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deepdoctor.cli import main
    from deepdoctor.commands import treat as treat_command

    monkeypatch.setattr(treat_command, "load_target", lambda target: exploding_mlp())
    monkeypatch.setattr(treat_command, "treat", lambda *args, **kwargs: in_process)
    main(["treat", "preset:unused", "--out", str(tmp_path / "cli")])
    in_process.save(tmp_path / "api")
    names = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "api").iterdir())
    assert {"changes.py", "treated_model.pt", "treatment.json", "report.html"} <= set(names)
    for name in ("changes.py", "treatment.json"):
        assert (tmp_path / "cli" / name).read_text() == (tmp_path / "api" / name).read_text()
    cli, api = (torch.load(tmp_path / d / "treated_model.pt") for d in ("cli", "api"))
    assert cli.keys() == api.keys() and all(torch.equal(cli[k], api[k]) for k in cli)

"""One measurement, one judgement: the same numbers give the same verdict wherever they were
measured (a checkup, diagnose, or the Probe in a loop of your own)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cases import CASES, Case
from test_checkup_agreement import SEEABLE
from torch import nn

import deepdoctor as dd
from deepdoctor import models, training
from deepdoctor.detectors import data as data_detector
from deepdoctor.trace import Trace

# What step 0 shows, in a checkup and in a one-step diagnose alike (the class balance of a
# single batch is too few examples to judge, see detectors.data.MIN_PER_CLASS).
STEP0_KINDS = SEEABLE - {"class_imbalance"}


def step0_kinds(findings: list[dd.Finding]) -> set[str]:
    return {f.kind for f in findings if f.is_problem} & STEP0_KINDS


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_checkup_and_a_one_step_diagnose_name_the_same_problems(case: Case) -> None:
    """On the same batch, checkup(model, (X, y)) and diagnose(model, (X, y), steps=1,
    batch_size=len(X)) judge step 0 alike."""
    torch.set_num_threads(1)
    exp = case.build()
    X, y = next(training.batches(exp.train, exp.batch_size, exp.seed))
    chk = dd.checkup(exp.build(), (X, y), exp.loss_fn, seed=exp.seed, n_classes=exp.n_classes)
    diag = dd.diagnose(
        exp.build(),
        (X, y),
        loss_fn=exp.loss_fn,
        optimizer=exp.optimizer,
        steps=1,
        seed=exp.seed,
        batch_size=len(X),
        n_classes=exp.n_classes,
    )
    assert step0_kinds(chk.findings) == step0_kinds(diag.findings)


def _imbalanced_digits() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]:
    """Digits with every 0 and a twentieth of the other classes: 20:1 between classes."""
    split = dd.data.load("digits")
    X, y = split.train
    keep = (y == 0) | (torch.arange(len(y)) % 20 == 0)
    return (X[keep], y[keep]), split.val


LR = 0.01


def _plain_loop(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor], val, steps: int):  # type: ignore[no-untyped-def]
    """What a user writes: SGD, the loss and targets told to the Probe, evaluations told
    too, at the steps and on the samples ``training.train`` uses (so the runs match)."""
    every = max(1, min(16, steps // 20))  # what diagnose picks for this many steps
    eval_every = max(1, steps // 10)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    X_probe, y_probe = training.loader_tensors(train, training.TRAIN_EVAL_SAMPLES)
    torch.manual_seed(0)
    stream = training.batches(train, 64, seed=0)
    with dd.Probe(model, every=every) as probe:
        for step in range(steps):
            xb, yb = next(stream)
            loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            probe.record_loss(loss, targets=yb)
            if (step + 1) % eval_every == 0:
                tl, ta = training.evaluate(model, X_probe, y_probe, loss_fn, "classification")
                vl, va = training.evaluate(model, *val, loss_fn, "classification")
                probe.record_eval(
                    step + 1, train_loss=tl, train_accuracy=ta, val_loss=vl, val_accuracy=va
                )
    return probe.trace


def test_a_plain_loop_under_the_probe_gets_the_findings_of_diagnose() -> None:
    torch.set_num_threads(1)
    train, val = _imbalanced_digits()

    def build() -> nn.Module:  # an output layer 30x too large: a bad loss at init
        torch.manual_seed(0)
        model = models.mlp(64, 10, depth=3, width=32, init="he")
        with torch.no_grad():
            model.out.weight.mul_(30.0)
        return model

    sgd = lambda params: torch.optim.SGD(params, lr=LR)  # noqa: E731
    diag = dd.diagnose(build(), train, val, optimizer=sgd, steps=60, seed=0)
    assert diag.stop_reason == "completed"
    trace = _plain_loop(build(), train, val, steps=60)
    mine = dd.detect(trace)

    def verdict(findings: list[dd.Finding]) -> list[tuple[str, str, tuple[str, ...]]]:
        return sorted((f.kind, f.severity, tuple(f.layers)) for f in findings)

    assert verdict(mine) == verdict(diag.findings)
    assert {"class_imbalance", "bad_init_loss"} <= {f.kind for f in diag.problems}
    # The facts the Probe tallied from the targets: the task and classes exactly, the counts
    # from the batches it saw (each epoch drops its last partial batch)
    facts, known = trace.facts, diag.trace.facts
    assert (facts.task, facts.n_classes, facts.chance_loss) == ("classification", 10, math.log(10))
    assert known.class_counts is not None and facts.class_counts is not None
    seen = np.array(facts.class_counts) / sum(facts.class_counts)
    whole = np.array(known.class_counts) / sum(known.class_counts)
    np.testing.assert_allclose(seen, whole, atol=0.02)


# -- typed facts from record_loss --------------------------------------------------------------


def _one_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: nn.Module) -> Trace:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with dd.Probe(model) as probe:
        out = model(x)
        value = loss(out.squeeze(-1) if out.shape[-1] == 1 else out, y)
        value.backward()
        opt.step()
        probe.record_loss(value, targets=y)
    return probe.trace


def test_record_loss_tells_the_trace_the_task_classes_and_counts() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3)
    y = torch.tensor([0, 0, 0, 0, 0, 1, 2, 2])
    facts = _one_step(nn.Linear(3, 4), x, y, nn.CrossEntropyLoss()).facts
    assert facts.task == "classification" and facts.n_classes == 4  # the output's width
    assert facts.class_counts == [5, 1, 2, 0]
    binary = _one_step(nn.Linear(3, 1), x, (y > 0).float(), nn.BCEWithLogitsLoss()).facts
    assert binary.task == "binary" and binary.class_counts == [5, 3]
    target = torch.linspace(-1, 1, 8)
    regression = _one_step(nn.Linear(3, 1), x, target, nn.MSELoss()).facts
    assert regression.task == "regression" and regression.class_counts is None
    assert regression.target_var == pytest.approx(float(target.var()))


def test_sequence_labels_are_counted_over_the_positions_that_count() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 5)
    x = torch.randn(2, 4, 3)  # (batch, time, features) -> (batch, time, classes)
    y = torch.tensor([[1, 1, -100, -100], [4, 1, 0, -100]])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with dd.Probe(model) as probe:
        out = model(x)
        loss = nn.functional.cross_entropy(out.reshape(-1, 5), y.reshape(-1), ignore_index=-100)
        loss.backward()
        opt.step()
        probe.record_loss(loss, targets=y)
    assert probe.trace.facts.n_classes == 5
    assert probe.trace.facts.class_counts == [1, 3, 0, 0, 1]


def test_record_loss_with_targets_of_the_wrong_length_says_so() -> None:
    model = nn.Linear(3, 2)
    with dd.Probe(model) as probe:
        loss = model(torch.randn(8, 3)).sum()
        with pytest.raises(ValueError, match="record_loss got 5 targets, but the model's last"):
            probe.record_loss(loss, targets=torch.zeros(5, dtype=torch.long))


def test_class_balance_of_a_handful_of_examples_is_not_judged() -> None:
    trace = Trace(["fc"], {"fc": "Linear"})
    trace.facts.class_counts = [12, 1, 6, 7, 5, 8, 6, 7, 6, 6]  # one batch of 64, by chance
    assert data_detector.detect(trace) == []
    trace.facts.class_counts = [240, 20, 120, 140, 100, 160, 120, 140, 120, 120]
    assert [f.kind for f in data_detector.detect(trace)] == ["class_imbalance"]


# -- the defects of the issue ---------------------------------------------------------------------


def test_checkup_and_diagnose_take_binary_float_targets() -> None:
    split = dd.data.load("digits")
    X, y = split.train
    binary = (y >= 5).float()
    model = models.mlp(64, 1, depth=2, width=16)
    chk = dd.checkup(model, (X[:256], binary[:256]), nn.BCEWithLogitsLoss())
    assert chk.trace.facts.task == "binary" and chk.trace.facts.n_classes == 2
    assert sum(chk.trace.facts.class_counts or []) == 256
    diag = dd.diagnose(model, (X, binary), loss_fn=nn.BCEWithLogitsLoss(), steps=20)
    assert diag.trace.facts.task == "binary"
    assert diag.history.final["train_accuracy"] > 0.5


def test_a_format_1_trace_loads_with_its_facts(tmp_path: Path) -> None:
    """A Trace saved by the previous version (format 1, facts in its free-form meta)."""
    trace = Trace(["fc"], {"fc": "Linear"})
    trace.steps.append(0, {"loss": [2.3]})
    path = trace.save(tmp_path / "new.npz")
    with np.load(path) as stored:
        arrays = dict(stored)
    import json

    header = json.loads(str(arrays["header"]))
    header["format_version"] = 1
    for key in ("facts", "weight_layers"):
        header.pop(key)
    header["meta"] = {"task": "classification", "n_classes": 10, "stopped": {"reason": "x"}}
    arrays["header"] = np.asarray(json.dumps(header))
    np.savez(tmp_path / "old.npz", **arrays)  # type: ignore[arg-type]
    old = Trace.load(tmp_path / "old.npz")
    assert (old.facts.task, old.facts.n_classes, old.facts.stop_reason) == (
        "classification",
        10,
        "x",
    )
    assert old.weight_layers == ["fc"] and old.loss().tolist() == [2.3]

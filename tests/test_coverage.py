"""Coverage: every result says what it saw, and bad traces get a statement, never a crash.

Regenerate the golden files after an intended change with
``DEEPDOCTOR_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_coverage.py`` and review the diff.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
from rich.console import Console
from torch import nn

import deepdoctor as dd
from deepdoctor.detectors import coverage
from deepdoctor.detectors.coverage import NO_GRADIENT, NO_LOSS, NO_STEPS
from deepdoctor.detectors.loss import MIN_STEPS
from deepdoctor.findings import KINDS
from deepdoctor.report import SCHEMA_FILE, print_summary
from deepdoctor.trace import RunFacts, Trace

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("DEEPDOCTOR_UPDATE_GOLDEN") == "1"
NAN = math.nan


def hand_trace(
    n_steps: int,
    layers: tuple[str, ...] = ("fc1", "fc2", "fc3"),
    layer_type: str = "Linear",
    loss: float | None = None,
    value: float | None = None,
    flag: float = 0.0,
    facts: RunFacts | None = None,
) -> Trace:
    """A ReLU MLP's trace: the loss falls from 2.3 (or is ``loss`` at every step), every
    gradient, weight and activation statistic is ``value`` (NaN everywhere, say), and the
    Probe's non-finite flags are ``flag``."""
    names = list(layers)
    t = Trace(names, dict.fromkeys(names, layer_type), ["relu"], {"relu": "relu"}, facts=facts)
    for s in range(n_steps):
        t.steps.append(
            s,
            {
                "loss": [2.3 - 0.05 * s if loss is None else loss],
                "lr": [0.1],
                "grad_norm_total": [1.0 if value is None else value],
                "nonfinite_loss": [flag],
                "nonfinite_grad": [flag],
                "nonfinite_weight": [flag],
            },
        )
        t.layer.append(
            s,
            {
                "grad_norm_weight": [0.1 if value is None else value] * len(names),
                "grad_norm_bias": [0.1 if value is None else value] * len(names),
                "weight_norm": [3.0 if value is None else value] * len(names),
            },
        )
        t.acts.append(s, {"dead_frac": [0.05 if value is None else value]})
        t.inputs.append(s, {k: [1.0 if value is None else value] for k in t.inputs.stats})
    return t


def whats(cov: dict[str, Any]) -> dict[str, str]:
    return {e["what"]: e["reason"] for e in cov["cannot_judge"]}


def nan_model() -> nn.Module:
    class NaNNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.relu(self.fc1(x * float("nan"))))

    return NaNNet()


def probed(model: nn.Module, steps: int) -> Trace:
    torch.manual_seed(0)
    X, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with dd.Probe(model, optimizer=opt, every=1) as probe:
        for _ in range(steps):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(X), y)
            probe.record_loss(loss, targets=y)
            loss.backward()
            opt.step()
    return probe.trace


def render(data: dict[str, Any]) -> str:
    console = Console(width=100, no_color=True, record=True, force_terminal=False)
    with console.capture() as capture:
        print_summary(data, console)
    return "".join(line.rstrip() + "\n" for line in capture.get().splitlines())


def diagnosis_dict(trace: Trace) -> dict[str, Any]:
    findings = dd.detect(trace)
    return {
        "schema": "deepdoctor.diagnosis",
        "schema_version": 1,
        "healthy": not any(f.is_problem for f in findings),
        "findings": [f.to_dict() for f in findings],
        "coverage": coverage(trace),
    }


# -- what a trace holds ---------------------------------------------------------------------------


def test_coverage_counts_what_the_trace_holds() -> None:
    trace = hand_trace(30, facts=RunFacts(task="classification", n_classes=3))
    trace.layer_types["fc3"] = "LayerNorm"
    trace.weight_layers = ["fc1", "fc2"]
    for step in (9, 19, 29):
        trace.evals.append(step, {"val_loss": [1.0], "train_loss": [0.9]})
    cov = coverage(trace)
    assert {k: cov[k] for k in ("steps", "layers", "weight_layers", "activation_samples")} == {
        "steps": 30,
        "layers": 3,
        "weight_layers": 2,
        "activation_samples": 30,
    }
    assert cov["activations"] == {"relu": 1} and cov["functional_activations"] == 0
    assert (cov["loss_recorded"], cov["finite_loss_steps"], cov["gradient_steps"]) == (
        True,
        30,
        30,
    )
    assert cov["evaluations"] == 3
    assert cov["facts"] == {"task": "classification", "n_classes": 3, "class_counts": None}
    assert whats(cov) == {
        "gradients across depth": "fewer than 3 weight layers (2): gradients are not "
        "compared across depth",
        "class balance": "the class counts are unknown (pass targets= to record_loss): "
        "class balance is not judged",
    }
    assert cov["nothing_judged"] == []
    json.dumps(cov, allow_nan=False)


def test_functional_activations_are_counted_by_family() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.sigmoid(self.fc1(x)))

    cov = coverage(probed(Functional(), 3))
    assert cov["activations"] == {"sigmoid": 1}
    assert cov["functional_activations"] == 1
    assert cov["activation_samples"] == 3


# -- bad input: statements, never crashes ----------------------------------------------------------


def test_an_empty_trace_cannot_be_judged_at_all() -> None:
    trace = Trace(["fc"], {"fc": "Linear"})
    assert dd.detect(trace) == []
    cov = coverage(trace)
    assert cov["steps"] == 0 and cov["nothing_judged"] == [NO_STEPS]
    assert cov["cannot_judge"] == [{"what": "everything", "kinds": list(KINDS), "reason": NO_STEPS}]


def test_a_one_step_probe_trace_says_the_curve_is_not_judged() -> None:
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    trace = probed(model, 1)
    findings = dd.detect(trace)
    assert not any(f.is_problem for f in findings)
    cov = coverage(trace)
    assert (cov["steps"], cov["finite_loss_steps"], cov["weight_layers"]) == (1, 1, 2)
    assert cov["activations"] == {"relu": 1}
    reasons = whats(cov)
    assert reasons["loss curve"] == (
        f"fewer than {MIN_STEPS} steps with a finite loss (1): the loss curve is not judged "
        "(only a blow-up is)"
    )
    assert reasons["overfitting"] == "no evaluations: overfitting is not judged"
    assert "end of training" in reasons and cov["nothing_judged"] == []


def test_a_trace_without_loss_says_so() -> None:
    trace = hand_trace(30, loss=NAN)
    assert not any(f.is_problem for f in dd.detect(trace))
    cov = coverage(trace)
    assert not cov["loss_recorded"] and cov["finite_loss_steps"] == 0
    assert whats(cov)["loss"] == NO_LOSS
    assert cov["nothing_judged"] == []  # the gradients were still judged


def test_nan_everywhere_as_the_probe_flags_it_is_a_nonfinite_finding() -> None:
    trace = hand_trace(30, loss=NAN, value=NAN, flag=1.0)
    assert [(f.kind, f.severity) for f in dd.detect(trace)] == [("nonfinite", "critical")]
    reasons = whats(coverage(trace))
    assert reasons["loss"] == "every loss is NaN or Inf: the loss curve is not judged"
    assert reasons["gradients"] == "every gradient is NaN or Inf: gradients are not judged"


def test_nan_everywhere_without_flags_reads_as_nothing_judged() -> None:
    trace = hand_trace(30, loss=NAN, value=NAN, flag=NAN)
    data = diagnosis_dict(trace)
    assert data["findings"] == [] and data["healthy"]
    assert data["coverage"]["nothing_judged"] == [NO_LOSS, NO_GRADIENT]
    first = render(data).splitlines()[0]
    assert first.startswith("Diagnosis: nothing could be judged: no loss was recorded")
    assert "healthy" not in first


def test_layers_but_no_weight_layer() -> None:
    trace = hand_trace(30, layers=("norm",), layer_type="LayerNorm")
    assert trace.weight_layers == []
    dd.detect(trace)
    cov = coverage(trace)
    assert cov["weight_layers"] == 0
    assert whats(cov)["gradients"] == (
        "no weight layer (Linear, Conv ...) was watched: gradients are not judged"
    )


def test_a_blowup_from_a_zero_loss_is_critical_not_a_crash() -> None:
    trace = hand_trace(30, loss=0.0)
    trace.facts.stop_reason = "loss_blowup"
    (finding,) = [f for f in dd.detect(trace) if f.kind == "diverging_loss"]
    assert finding.severity == "critical" and finding.evidence["ratio"] == math.inf


def test_a_model_that_outputs_nan_is_never_healthy() -> None:
    trace = probed(nan_model(), 5)
    assert "nonfinite" in {f.kind for f in dd.detect(trace) if f.severity == "critical"}
    cov = coverage(trace)
    assert cov["loss_recorded"] and cov["finite_loss_steps"] == 0
    X, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    chk = dd.checkup(nan_model(), (X, y))
    diag = dd.diagnose(nan_model(), (X, y), steps=5, reference=False)
    for result in (chk, diag):
        assert not result.healthy and "nonfinite" in result.kinds()
        assert result.coverage["finite_loss_steps"] == 0
        assert "nothing could be judged" not in render(result.to_dict())


# -- results and the summary -----------------------------------------------------------------------


def test_results_carry_coverage_in_their_json() -> None:
    X, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    chk = dd.checkup(model, (X, y))
    diag = dd.diagnose(model, (X, y), steps=12, reference=False)
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    for result, steps in ((chk, 1), (diag, 12)):
        assert result.coverage == coverage(result.trace)
        assert result.coverage["steps"] == steps and result.nothing_judged == []
        data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
        assert data["coverage"] == result.coverage
        assert [e.message for e in validator.iter_errors(data)] == []
        assert f"\ncoverage: {steps} step" in render(data)


@pytest.mark.parametrize(
    "name",
    ["summary_coverage_healthy", "summary_coverage_nothing_judged"],
)
def test_coverage_line_matches_golden_file(name: str) -> None:
    if name == "summary_coverage_healthy":
        trace = hand_trace(30, facts=RunFacts(task="classification", n_classes=10))
        trace.steps.set_stat("loss", [[0.2 + 2.1 * math.exp(-s / 3)] for s in range(30)])
        trace.facts.class_counts = [200, 210, 190, 205, 195, 200, 200, 210, 190, 200]
        for step in (9, 19, 29):
            trace.evals.append(step, {"val_loss": [1.0], "train_loss": [0.9]})
    else:
        trace = Trace(["fc"], {"fc": "Linear"})
    text = render(diagnosis_dict(trace))
    path = GOLDEN / f"{name}.txt"
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"no golden file {path}; run with DEEPDOCTOR_UPDATE_GOLDEN=1"
    assert text == path.read_text()

"""Which remedies treat screens first: root causes, and what can fix a NaN at initialisation."""

from __future__ import annotations

import torch
from torch import nn

import deepdoctor as dd
from deepdoctor.findings import Finding
from deepdoctor.search import _with_rate, candidate_remedies


def _finding(kind: str, severity: str, remedies: list[str], caused_by: str | None = None):
    return Finding(kind, severity, kind, remedies=remedies, caused_by=caused_by)


def test_the_root_causes_remedies_are_screened_before_the_more_severe_symptoms() -> None:
    findings = [
        _finding("exploding_gradients", "critical", ["gradient_clipping", "lower_lr"]),
        _finding("unscaled_inputs", "warning", ["standardize_inputs", "batch_norm"]),
        # folded under its root cause at info: it names no candidate of its own
        _finding("bad_init_loss", "info", ["xavier_init"], caused_by="unscaled_inputs"),
    ]
    assert candidate_remedies(findings) == [
        ["standardize_inputs"],
        ["batch_norm"],
        ["gradient_clipping"],
        ["lower_lr"],
    ]


def test_the_inputs_remedies_come_before_those_of_what_the_inputs_cause() -> None:
    # raw MNIST-1D into a sigmoid MLP, as diagnosed: both at warning, saturation listed first
    findings = [
        _finding("saturated_units", "warning", ["relu_activation", "standardize_inputs"]),
        _finding("unscaled_inputs", "warning", ["standardize_inputs", "batch_norm"]),
    ]
    assert candidate_remedies(findings)[:2] == [["standardize_inputs"], ["batch_norm"]]


class _Log(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)  # NaN for the negative standardised inputs


def test_a_nan_forward_at_initialisation_gets_input_and_init_remedies_not_the_optimizer() -> None:
    torch.manual_seed(0)
    X, y = torch.randn(256, 8), torch.randint(0, 3, (256,))
    model = nn.Sequential(_Log(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    diag = dd.diagnose(model, (X, y), steps=5)
    nonfinite = [f for f in diag.findings if f.kind == "nonfinite"]
    assert nonfinite and nonfinite[0].evidence["step"] == 0
    assert nonfinite[0].remedies == [
        "xavier_init",
        "batch_norm",
        "layer_norm",
        "standardize_inputs",
    ]
    assert "lower_lr" not in nonfinite[0].remedies


def test_a_nan_after_updates_gets_the_optimizer_remedies() -> None:
    torch.manual_seed(0)
    X, y = torch.randn(256, 8), torch.randint(0, 3, (256,))
    X[:, 0] = 0.0  # that input's weights never get a gradient: Adam with eps=0 makes 0/0
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=0.0)
    diag = dd.diagnose(model, (X, y), optimizer=opt, steps=20)
    nonfinite = [f for f in diag.findings if f.kind == "nonfinite"]
    assert nonfinite and nonfinite[0].evidence["step"] > 0
    assert nonfinite[0].remedies == ["lower_lr", "gradient_clipping", "lr_warmup", "adam"]


def test_large_inputs_under_sgd_are_standardised_with_a_rate_chosen_again() -> None:
    X, y = torch.randn(32, 4) * 20, torch.randint(0, 2, (32,))
    large = Finding(
        "unscaled_inputs", "warning", "", remedies=["standardize_inputs"], evidence={"rms": 20.0}
    )
    sgd = dd.Experiment(
        lambda: nn.Linear(4, 2), (X, y), optimizer=lambda p: torch.optim.SGD(p, lr=0.01)
    )
    adam = sgd.replace(optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    found = candidate_remedies([large])
    assert _with_rate(found, [large], sgd) == [
        ["standardize_inputs", "raise_lr"],
        ["standardize_inputs"],
    ]
    assert _with_rate(found, [large], adam) == [["standardize_inputs"]]  # Adam divides it out
    tiny = Finding(
        "unscaled_inputs", "warning", "", remedies=["standardize_inputs"], evidence={"rms": 0.01}
    )
    assert _with_rate(found, [tiny], sgd) == [["standardize_inputs"]]

"""What a REPL and a notebook show: ``str(result)`` is the plain terminal summary, and
``_repr_html_`` an inline fragment of the report page; ``learning_speed(named=True)``."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

import deepdoctor as dd
from deepdoctor.report import print_summary


@pytest.fixture(scope="module")
def diagnosis() -> dd.Diagnosis:
    torch.manual_seed(0)
    X = torch.randn(128, 6)
    y = (X[:, 0] > 0).long()
    model = nn.Sequential(
        nn.Linear(6, 8), nn.Sigmoid(), nn.Linear(8, 8, bias=False), nn.Linear(8, 2)
    )
    return dd.diagnose(model, (X, y), val=(X, y), steps=24, seed=0)


@pytest.mark.parametrize("columns", ["80", "120"])
def test_str_is_the_terminal_summary_without_colour(
    diagnosis: dd.Diagnosis, columns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    out = io.StringIO()
    print_summary(diagnosis.to_dict(), Console(file=out, width=int(columns), no_color=True))
    text = str(diagnosis)
    assert text == "".join(line.rstrip() + "\n" for line in out.getvalue().splitlines())
    assert "\x1b" not in text and text.startswith("Diagnosis")
    assert max(map(len, text.splitlines())) <= int(columns)


def test_repr_html_is_a_fragment_with_the_findings_and_inline_plots(
    diagnosis: dd.Diagnosis,
) -> None:
    fragment = diagnosis._repr_html_()
    assert fragment.startswith('<div class="deepdoctor-result"><style>')
    assert fragment.endswith("</div>")
    for page_only in ("<html", "<body", "<!DOCTYPE", "<nav"):
        assert page_only not in fragment
    assert '<section id="findings">' in fragment and '<section id="curves">' in fragment
    assert fragment.count('src="data:image/png;base64,') >= 2  # curves and gradient flow
    assert "http://" not in fragment and "https://" not in fragment  # self-contained
    # the page's styles apply inside the fragment only, never to the notebook around it
    style = fragment.split("<style>")[1].split("</style>")[0]
    rules = [rule.split("{")[0] for rule in style.split("}") if rule]
    assert all(sel.startswith(".deepdoctor-result") for rule in rules for sel in rule.split(","))


def test_learning_speed_named_maps_each_layer_to_its_column(diagnosis: dd.Diagnosis) -> None:
    trace = diagnosis.trace
    speed = trace.learning_speed()
    named = trace.learning_speed(named=True)
    assert isinstance(speed, np.ndarray) and speed.shape == (trace.n_steps, len(trace.layers))
    assert list(named) == trace.layers == ["0", "2", "3"]
    for i, name in enumerate(trace.layers):
        np.testing.assert_array_equal(named[name], speed[:, i])
    # layer "2" has no bias: its speed is the weight-gradient norm
    np.testing.assert_array_equal(named["2"], trace.grad_norms()[:, 1])


def test_checkup_shows_its_depth_and_findings_inline() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(8) for m in (nn.Linear(8, 8), nn.Sigmoid())])
    chk = dd.checkup(model, (torch.randn(64, 8), torch.randn(64, 8)))
    fragment = chk._repr_html_()
    assert '<section id="checkup">' in fragment and "data:image/png;base64," in fragment
    assert "<html" not in fragment
    assert str(chk).startswith("Checkup")

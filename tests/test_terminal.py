"""The terminal summary: golden files for fixed cases, and readable without colour.

Regenerate the golden files after an intended change with
``DEEPDOCTOR_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_terminal.py`` and review the diff.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import report_cases as rc
from rich.console import Console

import deepdoctor as dd
from deepdoctor.report import print_summary
from deepdoctor.report.terminal import print_findings

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("DEEPDOCTOR_UPDATE_GOLDEN") == "1"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def plain_console(width: int = 100) -> Console:
    """What a pipe or a log file gets: no colour, no terminal."""
    return Console(width=width, no_color=True, record=True, force_terminal=False)


def render(data: dict[str, Any], console: Console) -> str:
    with console.capture() as capture:
        print_summary(data, console)
    return capture.get()


def without_trailing_spaces(text: str) -> str:
    """Rich pads centred titles with spaces nobody reads; editors strip them from files."""
    return "".join(line.rstrip() + "\n" for line in text.splitlines())


CASES: dict[str, Callable[[], dict[str, Any]]] = {
    "summary_diagnosis": rc.hand_diagnosis,
    "summary_checkup": rc.checkup_dict,
    "summary_treatment": rc.treatment_dict,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_summary_matches_golden_file(name: str) -> None:
    text = without_trailing_spaces(render(CASES[name](), plain_console()))
    path = GOLDEN / f"{name}.txt"
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}; run with DEEPDOCTOR_UPDATE_GOLDEN=1"
    assert text == path.read_text(), (
        f"the summary differs from {path}; if the change is intended, regenerate with "
        "DEEPDOCTOR_UPDATE_GOLDEN=1 and review the diff"
    )


def test_plain_summary_has_no_escape_codes_and_keeps_severity_words() -> None:
    text = render(rc.hand_diagnosis(), plain_console())
    assert "\x1b" not in text
    assert "2 problems (1 critical, 1 warning)" in text
    rows = [line for line in text.splitlines() if line.startswith("│ ")]
    assert [r.split("│")[1].strip() for r in rows if r.split("│")[1].strip()] == [
        "critical",
        "warning",
        "info",
    ]
    assert "final validation accuracy  10.0%" in text


def test_colour_terminal_colours_severity_and_says_the_same_words() -> None:
    console = Console(width=100, force_terminal=True, color_system="standard")
    coloured = render(rc.hand_diagnosis(), console)
    assert "\x1b[1;31mcritical" in coloured  # bold red
    assert "\x1b[33mwarning" in coloured  # yellow
    assert ANSI.sub("", coloured) == render(rc.hand_diagnosis(), plain_console())


def test_no_color_environment_turns_colour_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    console = Console(width=100, force_terminal=True, color_system="standard")
    text = render(rc.hand_diagnosis(), console)
    assert not re.search(r"\x1b\[[0-9;]*3[0-7]m", text)  # no foreground colour codes
    assert "critical" in text


def test_names_from_the_data_print_literally() -> None:
    finding = dd.Finding(
        "dead_units",
        "warning",
        "units in [red]x[/red] never fire",
        layers=["[bold]blocks[0]"],
        remedies=["leaky_relu_activation"],
    )
    console = plain_console(width=120)
    with console.capture() as capture:
        print_findings([finding.to_dict()], console)
    text = capture.get()
    assert "[bold]blocks[0]" in text and "units in [red]x[/red] never fire" in text


def test_healthy_result_says_so_in_the_headline() -> None:
    data = {
        "schema": "deepdoctor.diagnosis",
        "schema_version": 1,
        "healthy": True,
        "findings": [],
        "experiment": {"name": "ok"},
    }
    text = render(data, plain_console())
    assert text.splitlines()[:2] == ["Diagnosis of ok: healthy", "findings: none"]

"""The terminal summary: golden files for fixed cases, and readable without colour.

Each summary has a golden file at 80 columns (findings as blocks; a pipe gets the same) and
at 120 (the table); so has ``deepdoctor presets``. Regenerate them after an intended change
with ``DEEPDOCTOR_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_terminal.py`` and review the diff.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import report_cases as rc
from rich.console import Console

import deepdoctor as dd
from deepdoctor.cli import main
from deepdoctor.presets import PRESETS
from deepdoctor.report import print_summary
from deepdoctor.report.terminal import NARROW_WIDTH, print_findings, print_trials
from deepdoctor.wording import readable, rounded

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("DEEPDOCTOR_UPDATE_GOLDEN") == "1"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def plain_console(width: int = 120) -> Console:
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


def check_golden(text: str, name: str) -> None:
    text = without_trailing_spaces(text)
    path = GOLDEN / f"{name}.txt"
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}; run with DEEPDOCTOR_UPDATE_GOLDEN=1"
    assert text == path.read_text(), (
        f"the output differs from {path}; if the change is intended, regenerate with "
        "DEEPDOCTOR_UPDATE_GOLDEN=1 and review the diff"
    )


def piped_console(monkeypatch: pytest.MonkeyPatch) -> Console:
    """What ``deepdoctor ... | less`` gets: not a terminal, no COLUMNS, so rich's 80."""
    monkeypatch.delenv("COLUMNS", raising=False)
    return Console(file=io.StringIO(), no_color=True)


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("name", sorted(CASES))
def test_summary_matches_golden_file(name: str, width: int) -> None:
    check_golden(render(CASES[name](), plain_console(width)), f"{name}_{width}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_piped_summary_is_the_80_column_one(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    console = piped_console(monkeypatch)
    assert console.width == 80 and not console.is_terminal
    check_golden(render(CASES[name](), console), f"{name}_80")


@pytest.mark.parametrize("columns", ["80", "120"])
def test_presets_match_golden_file(
    columns: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    assert main(["presets"]) == 0
    check_golden(capsys.readouterr().out, f"presets_{columns}")


def test_piped_presets_print_every_name_whole_on_its_own_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    assert main(["presets"]) == 0  # pytest's capture is a pipe: not a terminal
    out = capsys.readouterr().out
    check_golden(out, "presets_80")
    lines = out.splitlines()
    assert sorted(name for name in PRESETS if name in lines) == sorted(PRESETS)
    assert max(len(line) for line in lines) <= 80 and "…" not in out


def long_named_findings() -> list[dict[str, Any]]:
    """Findings with the longest kind and remedy names, and a ratio only e-notation fits."""
    return rc.hand_diagnosis()["findings"] + [
        dd.Finding(
            "exploding_gradients",
            "critical",
            "Gradients grow 3e+33x from the last layers to the first (relative to weights).",
            layers=["encoder.blocks.11.attention", "encoder.blocks.10.attention"],
            evidence={"ratio_first_to_last": 3e33, "threshold_ratio": 1e6},
            remedies=["leaky_relu_activation", "gradient_clipping", "orthogonal_init"],
        ).to_dict()
    ]


@pytest.mark.parametrize("width", [60, 80, NARROW_WIDTH - 1, NARROW_WIDTH, 120, 160])
def test_identifiers_are_never_cut_or_broken(width: int) -> None:
    findings = long_named_findings()
    console = plain_console(width)
    with console.capture() as capture:
        print_findings(findings, console)
    words = set(capture.get().split())
    for f in findings:
        names = [f["kind"], *f["remedies"][:3], *f["layers"][:3], *f["evidence"]]
        # whole, with at most the comma or colon that follows it in a list
        assert all({n, n + ",", n + ":"} & words for n in names), (width, names)
    table = any(w.startswith("┃") for w in words)
    # at NARROW_WIDTH the two long layer names do not fit their column: blocks still
    assert table == (width >= 120)


def test_findings_block_puts_each_part_on_its_own_line() -> None:
    console = plain_console(80)
    with console.capture() as capture:
        print_findings(long_named_findings()[-1:], console)
    lines = [line.rstrip() for line in capture.get().splitlines()]
    assert lines == [
        "findings",
        "exploding_gradients",
        "  severity  critical",
        "  layers    encoder.blocks.11.attention, encoder.blocks.10.attention",
        "  evidence  ratio_first_to_last: 3e+33",
        "            threshold_ratio: 1e+06",
        "  remedies  leaky_relu_activation, gradient_clipping, orthogonal_init",
        "  Gradients grow over 10^33x from the last layers to the first (relative to",
        "  weights).",
        "",
    ]


def test_numbers_in_sentences_are_rounded_for_people() -> None:
    assert readable("are 3e+33x smaller") == "are over 10^33x smaller"
    assert readable("grew 1e+06x, then 1.2e+03x") == "grew 10^6x, then 1,200x"
    assert (
        readable("shrink 3.2e-05x; layer fc1e+2 stays") == "shrink 3.2×10^-5x; layer fc1e+2 stays"
    )
    assert [rounded(v) for v in (0.5, 123.456, 999.9, 0.0012, 2.5e7)] == [
        "0.5",
        "123",
        "1,000",
        "0.0012",
        "over 10^7",
    ]


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


@pytest.mark.parametrize("width", [80, 120])  # blocks and the table
def test_colour_terminal_colours_severity_and_says_the_same_words(width: int) -> None:
    console = Console(width=width, force_terminal=True, color_system="standard")
    coloured = render(rc.hand_diagnosis(), console)
    assert "\x1b[1;31mcritical" in coloured  # bold red
    assert "\x1b[33mwarning" in coloured  # yellow
    assert ANSI.sub("", coloured) == render(rc.hand_diagnosis(), plain_console(width))


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


@pytest.mark.parametrize("width", [80, 120])
def test_trials_match_golden_file_and_keep_remedy_names_whole(width: int) -> None:
    data = rc.treatment_dict()
    console = plain_console(width)
    with console.capture() as capture:
        print_trials(data["trials"], console)
    out = capture.get()
    check_golden(out, f"trials_{width}")
    words = set(out.split())
    assert all("+".join(t["remedies"]) in words for t in data["trials"])

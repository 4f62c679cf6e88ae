"""The command line in-process: --help, --version, data list, demo, usage errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from deepdoctor import __version__
from deepdoctor.cli import main
from deepdoctor.report.facts import speed_comparison


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: deepdoctor" in out
    for command in ("data", "demo"):
        assert command in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"deepdoctor {__version__}"


def test_data_list_names_every_data_set(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("digits", "mnist1d", "teacher", "spirals", "mnist", "fashion-mnist", "cifar10"):
        assert name in out
    assert "local files (root=DIR)" in out and "embedded" in out


def test_demo_prints_the_learning_speed_table(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["demo", "--steps", "5", "--no-treat", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "learning speed per layer" in out and "12 of 51 layers shown" in out
    rows = [line for line in out.splitlines() if re.match(r"│ (fc\d+|out) ", line)]
    names = [row.split("│")[1].strip() for row in rows]
    # 12 evenly spaced layers, the first and the last always among them, input at the top
    assert names[0] == "fc1" and names[-1] == "out" and len(names) == 12
    depth = [51 if n == "out" else int(n[2:]) for n in names]
    assert depth == sorted(depth)
    start = {name: float(row.split("│")[2]) for name, row in zip(names, rows, strict=True)}
    # geometric vanishing, and still measured (not 0) where float32 squares would underflow
    assert 0 < start["fc1"] < 1e-30 < start["fc46"] < start["out"]
    assert "5 steps, train loss" in out
    assert "(chance is 10%)" in out
    assert (tmp_path / "checkup" / "checkup.json").is_file()
    assert (tmp_path / "diagnosis" / "diagnosis.json").is_file()
    assert not (tmp_path / "treatment").exists()


def test_demo_runs_checkup_diagnose_treat_and_report(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["demo", "--steps", "20", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for step in ("1. checkup", "2. diagnose", "3. treat", "4. report"):
        assert step in out
    assert "before / after" in out and "compute: " in out
    treatment = json.loads((tmp_path / "treatment" / "treatment.json").read_text())
    assert treatment["schema"] == "deepdoctor.treatment"
    assert treatment["before"]["val_accuracy"] < 0.2  # the demo's patient is at chance
    assert treatment["compute"] <= 3.0
    for path in ("checkup/report.html", "diagnosis/report.html", "treatment/report.html"):
        assert (tmp_path / path).stat().st_size > 10_000
    compile((tmp_path / "treatment" / "changes.py").read_text(), "changes.py", "exec")


def test_speed_comparison_says_when_the_first_layer_underflowed() -> None:
    assert speed_comparison(0.0, 0.13) == (
        "the first layer's gradient underflowed to exactly 0: it does not learn at all, while "
        "the last layer's is 0.13"
    )
    expected = "the first layer learns 10^8 times slower than the last"
    assert speed_comparison(2e-9, 0.2) == expected
    assert speed_comparison(0.4, 0.2) == "the first layer learns 2 times as fast as the last"
    assert "not finite" in speed_comparison(float("nan"), 0.2)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["demo", "--steps", "many"], "invalid int value: 'many'"),
        (["demo", "--steps", "0"], "steps must be at least 1, got 0"),
        (["data"], "the following arguments are required"),
    ],
)
def test_usage_errors_exit_2_with_a_message(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: deepdoctor" in capsys.readouterr().out


def test_threads_option_sets_torch_threads(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    try:
        assert main(["--threads", "2", "data", "list"]) == 0
        assert torch.get_num_threads() == 2
        monkeypatch.delenv("DEEPDOCTOR_THREADS", raising=False)
        assert main(["data", "list"]) == 0
        assert torch.get_num_threads() == 1  # the default: one thread
        assert main(["--threads", "0", "data", "list"]) == 2
        assert "--threads must be a whole number >= 1, got 0" in capsys.readouterr().err
        monkeypatch.setenv("DEEPDOCTOR_THREADS", "many")
        assert main(["data", "list"]) == 2
        assert "DEEPDOCTOR_THREADS must be a whole number" in capsys.readouterr().err
    finally:
        torch.set_num_threads(1)

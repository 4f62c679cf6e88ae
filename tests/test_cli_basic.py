"""The command line in-process: --help, --version, data list, demo, usage errors."""

from __future__ import annotations

import pytest

from deepdoctor import __version__
from deepdoctor.cli import main
from deepdoctor.commands.demo import _speed_comparison


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


def test_demo_prints_the_learning_speed_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--steps", "5"]) == 0
    out = capsys.readouterr().out
    assert "learning speed per layer" in out
    rows = [line for line in out.splitlines() if line.startswith("│ ")]
    names = [row.split("│")[1].strip() for row in rows]
    assert names == [f"fc{i}" for i in range(1, 51)] + ["out"]  # input at the top
    start = {name: float(row.split("│")[2]) for name, row in zip(names, rows, strict=True)}
    # geometric vanishing, and still measured (not 0) where float32 squares would underflow
    assert 0 < start["fc26"] < 1e-18 < start["fc40"] < start["out"]
    assert "after 5 steps: train loss" in out
    assert "(chance is 10%)" in out


def test_speed_comparison_says_when_the_first_layer_underflowed() -> None:
    assert _speed_comparison(0.0, 0.13) == (
        "the first layer's gradient underflowed to exactly 0: it does not learn at all, while "
        "the last layer's is 1.3e-01."
    )
    expected = "the first layer learns 1.0e-08 times as fast as the last."
    assert _speed_comparison(2e-9, 0.2) == expected
    assert "not finite" in _speed_comparison(float("nan"), 0.2)


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

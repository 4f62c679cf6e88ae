"""diagnose: copies, early stops, the JSON layout, bad input, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import deepdoctor as dd
from deepdoctor.cli import main
from deepdoctor.diagnose import BlowupStop, copy_optimizer


@pytest.fixture(scope="module")
def digits() -> dd.data.Split:
    return dd.data.load("digits")


def small_mlp() -> nn.Module:
    torch.manual_seed(0)
    return dd.models.mlp(64, 10, depth=2, width=32, init="he")


def test_diagnose_leaves_the_users_model_and_optimizer_untouched(digits: dd.data.Split) -> None:
    model = small_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    # One real step so the optimizer has momentum buffers to copy.
    nn.functional.cross_entropy(model(digits.X_train[:32]), digits.y_train[:32]).backward()
    opt.step()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    buffers = [s["momentum_buffer"].clone() for s in opt.state.values()]
    diag = dd.diagnose(model, digits.train, digits.val, optimizer=opt, steps=30)
    assert diag.history.steps == 30
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k])
    assert all(
        torch.equal(s["momentum_buffer"], b)
        for s, b in zip(opt.state.values(), buffers, strict=True)
    )
    assert diag.model is not model
    assert not torch.equal(diag.model.state_dict()["out.weight"], weights["out.weight"])


def test_copy_optimizer_rebinds_hyperparameters_and_state() -> None:
    model = small_mlp()
    opt = torch.optim.Adam(
        [
            {"params": list(model.parameters())[:2], "lr": 1e-2},
            {"params": list(model.parameters())[2:]},
        ],
        lr=1e-3,
        betas=(0.8, 0.9),
    )
    model(torch.randn(8, 64)).sum().backward()
    opt.step()
    clone = small_mlp()
    clone.load_state_dict(model.state_dict())
    new = copy_optimizer(opt, model, clone)
    assert type(new) is torch.optim.Adam
    assert [g["lr"] for g in new.param_groups] == [1e-2, 1e-3]
    assert new.param_groups[1]["betas"] == (0.8, 0.9)
    assert new.param_groups[0]["params"][0] is next(clone.parameters())
    first = new.state[next(clone.parameters())]
    assert torch.equal(first["exp_avg"], opt.state[next(model.parameters())]["exp_avg"])


def test_in_place_trains_the_given_model(digits: dd.data.Split) -> None:
    model = small_mlp()
    before = model.out.weight.clone()
    diag = dd.diagnose(model, digits.train, steps=10, in_place=True)
    assert diag.model is model and not torch.equal(model.out.weight, before)


def test_diagnose_is_deterministic(digits: dd.data.Split) -> None:
    a = dd.diagnose(small_mlp(), digits.train, digits.val, steps=40, seed=3)
    b = dd.diagnose(small_mlp(), digits.train, digits.val, steps=40, seed=3)
    assert a.history.loss == b.history.loss
    assert [f.to_dict() for f in a.findings] == [f.to_dict() for f in b.findings]


def test_a_blown_up_loss_stops_the_run_and_says_where(digits: dd.data.Split) -> None:
    diag = dd.diagnose(
        small_mlp(),
        digits.train,
        optimizer=lambda p: torch.optim.SGD(p, lr=10.0, momentum=0.9),
        steps=100,
    )
    assert diag.stop_reason == "loss_blowup"
    assert diag.stopped_at is not None and diag.stopped_at < 10
    assert diag.history.steps == diag.stopped_at
    (f,) = [f for f in diag.findings if f.kind == "diverging_loss"]
    assert f.severity == "critical" and f.evidence["ratio"] > f.evidence["threshold"]
    assert not diag.healthy


def test_blowup_callback_compares_with_the_median_start() -> None:
    class State:
        stop = None

        class history:  # noqa: N801
            loss: list[float] = []

    cb, state = BlowupStop(factor=10.0), State()
    for value in (2.0, 9.0, 2.2, 25.0):  # median start 2.2; 25 > 22
        state.history.loss.append(value)
        cb.on_step_end(state)  # type: ignore[arg-type]
    assert state.stop == "loss_blowup"


def test_nan_is_a_finding_not_a_crash(digits: dd.data.Split) -> None:
    class LogFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.log(x))

    diag = dd.diagnose(LogFirst(), digits.train, steps=20)
    (f,) = [f for f in diag.findings if f.kind == "nonfinite"]
    assert f.severity == "critical" and f.evidence["step"] == 0
    assert diag.stop_reason == "nonfinite_loss" and diag.stopped_at == 0


def test_to_dict_has_the_report_layout(digits: dd.data.Split) -> None:
    diag = dd.diagnose(small_mlp(), digits.train, digits.val, steps=20, name="t")
    data = json.loads(json.dumps(diag.to_dict(), allow_nan=False))
    assert data["schema"] == "deepdoctor.diagnosis" and data["schema_version"] == 1
    assert set(data) >= {"healthy", "findings", "experiment", "stopped", "history", "trace"}
    assert data["experiment"] == {
        "name": "t",
        "description": "",
        "steps": 20,
        "seed": 0,
        "batch_size": 64,
    }
    assert data["stopped"] == {"reason": "completed", "step": None}
    assert data["trace"]["facts"]["n_classes"] == 10
    assert len(data["trace"]["facts"]["class_counts"]) == 10
    assert data["healthy"] == diag.healthy


def test_own_loop_with_probe_gets_the_same_judgement(digits: dd.data.Split) -> None:
    torch.manual_seed(0)
    model = dd.models.mlp(64, 10, depth=3, width=64, init="he")
    with torch.no_grad():
        for m in (model.fc1, model.fc2, model.fc3):
            m.bias.fill_(-3.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    X, y = digits.train
    with dd.Probe(model) as probe:
        for step in range(60):
            idx = torch.arange(step * 16, step * 16 + 64) % len(X)
            loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            probe.record_loss(loss)
    found = {f.kind: f for f in dd.detect(probe.trace)}
    assert found["dead_units"].severity == "warning"
    assert found["stalled_loss"].evidence["relative_drop"] < 0.05


@pytest.mark.parametrize(
    "model, loss_fn, message",
    [
        (nn.Linear(10, 10), None, "cannot run on the training inputs"),
        (nn.Linear(64, 3), None, "needs at least 10 outputs"),
        (nn.Linear(64, 10), nn.CrossEntropyLoss(reduction="none"), "not a scalar"),
    ],
)
def test_bad_input_is_one_clear_error(
    digits: dd.data.Split, model: nn.Module, loss_fn: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        dd.diagnose(model, digits.train, loss_fn=loss_fn, steps=5)  # type: ignore[arg-type]


def test_diagnose_experiment_needs_an_experiment() -> None:
    with pytest.raises(TypeError, match="Experiment"):
        dd.diagnose_experiment(nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="diagnose_experiment"):
        dd.diagnose("model", (torch.zeros(4, 2), torch.zeros(4)))  # type: ignore[arg-type]


def test_broken_digits_presets_show_their_expected_kinds() -> None:
    from deepdoctor.presets import PRESETS, get_preset

    for name, preset in PRESETS.items():
        if "digits" in name and preset.expected and "50" not in name:
            diag = dd.diagnose_experiment(get_preset(name))
            assert set(preset.expected) <= {f.kind for f in diag.problems}, name


# -- the command line -------------------------------------------------------------------------


def test_cli_exit_code_0_for_a_healthy_preset(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "d.json"
    assert (
        main(["diagnose", "preset:healthy-mlp-digits", "--steps", "150", "--json", str(out)]) == 0
    )
    assert "healthy" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["healthy"] is True and data["experiment"]["steps"] == 150


def test_cli_exit_code_1_with_findings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagnose", "preset:diverging-lr10-digits", "--seed", "1"]) == 1
    out = capsys.readouterr().out
    assert "diverging_loss" in out and "critical" in out and "stopped at step" in out


def test_cli_exit_code_2_for_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def err() -> str:  # rich wraps long lines at the console width
        return " ".join(capsys.readouterr().err.split())

    assert main(["diagnose", "preset:no-such-thing"]) == 2
    assert main(["diagnose", str(tmp_path / "missing.py") + ":make"]) == 2
    assert "does not exist" in err()
    bad = tmp_path / "target.py"
    bad.write_text(
        "import torch, deepdoctor as dd\n"
        "def not_exp():\n    return 3\n"
        "def wrong_shape():\n"
        "    X, y = torch.randn(64, 5), torch.randint(0, 4, (64,))\n"
        "    return dd.Experiment(lambda: torch.nn.Linear(5, 2), (X, y), steps=5)\n"
    )
    assert main(["diagnose", f"{bad}:not_exp"]) == 2
    assert "not a deepdoctor.Experiment" in err()
    assert main(["diagnose", f"{bad}:wrong_shape"]) == 2
    assert "at least 4 outputs" in err()
    assert main(["diagnose", "preset:healthy-mlp-digits", "--steps", "0"]) == 2


def test_cli_lists_presets_with_their_expected_kinds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "sigmoid-mlp50-digits" in out and "healthy-mlp-digits" in out
    assert "vanishing_gradients" in out

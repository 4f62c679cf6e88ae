"""dd.compress: every figure a point reports, recounted here with plain torch."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import deepdoctor as dd
from deepdoctor.compress import METHODS, Compression, low_rank
from deepdoctor.report import load_result

WIDTH = 32
STRENGTHS = {
    "prune": (0.5, 0.9),
    "prune_structured": (0.5,),
    "low_rank": (0.1,),
    "distill": (0.75,),
}


def digits_experiment(model: Any = None, steps: int = 60, flatten: bool = True) -> dd.Experiment:
    split = dd.data.load("digits", flatten=flatten)
    return dd.Experiment(
        model or (lambda: dd.models.mlp(64, 10, depth=2, width=WIDTH)),
        split.train,
        split.val,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        steps=steps,
    )


@pytest.fixture(scope="module")
def result() -> Compression:
    torch.manual_seed(0)
    return dd.compress(digits_experiment(), strengths=STRENGTHS, finetune_steps=15, timing=0.005)


def nonzero_weights(model: nn.Module) -> int:
    return sum(
        int((t != 0).sum())
        for name, t in model.state_dict().items()
        if name.endswith("weight") and t.dim() >= 2
    )


def n_params(model: nn.Module) -> int:
    return sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())


def state_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def test_every_method_makes_points_and_the_baseline_is_the_trained_model(
    result: Compression,
) -> None:
    assert {p.method for p in result.points} == set(METHODS)
    assert result.skipped == []
    base = result.baseline
    assert base.connections == 64 * WIDTH + WIDTH * WIDTH + WIDTH * 10
    assert base.val_accuracy > 0.85  # 60 steps of SGD learn digits well past chance (0.1)


def test_pruned_models_hold_exactly_the_nonzero_weights_their_point_says(
    result: Compression,
) -> None:
    total = result.baseline.connections
    for point in result.method("prune"):
        model = point.model
        assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict())  # permanent
        assert nonzero_weights(model) == point.connections == total - round(point.strength * total)
        assert point.parameters == n_params(result.baseline.model)  # zeros still stored
    ninety = result.method("prune")[-1]
    assert ninety.finetune_steps == 30  # iterative: 50% then 90%, each fine-tuned 15 steps
    assert ninety.val_accuracy > result.baseline.val_accuracy - 0.1


def test_quantized_state_dict_bytes_are_measured_and_int8_is_smaller(result: Compression) -> None:
    for point in result.method("quantize"):
        assert point.bytes == state_bytes(point.model)
        # 4 bytes a weight become 1 (+ a scale per row); pickling overhead weighs on a tiny net
        assert point.bytes < 0.6 * state_bytes(result.baseline.model)
        assert point.connections == result.baseline.connections
        x = result.baseline.model  # the teacher is unchanged by quantising a copy
        assert all(type(p) is nn.Parameter and p.dtype == torch.float32 for p in x.parameters())
        assert abs(point.val_accuracy - result.baseline.val_accuracy) < 0.05
        assert "float32_latency_ms" in point.details
        slower = point.latency_ms > point.details["float32_latency_ms"]
        assert ("slower than float32" in point.note) == slower


def test_structured_pruning_really_shrinks_the_model_and_it_runs(result: Compression) -> None:
    (point,) = result.method("prune_structured")
    model = point.model
    widths = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    assert widths == [WIDTH // 2, WIDTH // 2, 10]
    assert n_params(model) == point.parameters < n_params(result.baseline.model)
    assert model(torch.randn(5, 64)).shape == (5, 10)


def test_low_rank_keeps_the_rank_that_retains_the_energy(result: Compression) -> None:
    (point,) = result.method("low_rank")
    teacher = dict(result.baseline.model.named_modules())
    assert point.details["ranks"]
    for name, info in point.details["ranks"].items():
        s = torch.linalg.svdvals(teacher[name].weight.detach().double())
        kept = (s**2).cumsum(0) / (s**2).sum()
        expected = int((kept < 0.9 - 1e-12).sum()) + 1
        assert info["rank"] == expected
        first = point.model.get_submodule(name)[0]
        assert first.out_features == expected
    assert nonzero_weights(point.model) == point.connections < result.baseline.connections


def test_factorise_reproduces_the_truncated_svd_exactly() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(20, 12)
    two = low_rank.factorise(layer, 3)
    u, s, vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
    w3 = u[:, :3] @ torch.diag(s[:3]) @ vh[:3]
    x = torch.randn(7, 20)
    torch.testing.assert_close(two(x), x @ w3.T + layer.bias, atol=1e-5, rtol=1e-5)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    full = low_rank.factorise(conv, 8 * 0 + min(8, 27))
    img = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(full(img), conv(img), atol=1e-4, rtol=1e-4)


def test_distilled_and_labels_only_students_share_size_and_both_learn(
    result: Compression,
) -> None:
    soft, plain = result.method("distill")
    assert soft.details["targets"] == "soft" and plain.details["targets"] == "labels"
    assert soft.parameters == plain.parameters <= 0.25 * result.baseline.parameters
    assert n_params(soft.model) == soft.parameters
    assert min(soft.val_accuracy, plain.val_accuracy) > 0.5


def test_pareto_front_and_choice_follow_their_definitions(result: Compression) -> None:
    points = result.all_points
    for p in points:
        dominated = any(
            q.val_accuracy >= p.val_accuracy
            and q.connections <= p.connections
            and (q.val_accuracy, -q.connections) != (p.val_accuracy, -p.connections)
            for q in points
        )
        assert p.pareto == (not dominated)
    chosen = result.chosen
    floor = result.baseline.val_accuracy - result.tolerance
    assert chosen.val_accuracy >= floor
    assert all(p.connections >= chosen.connections for p in points if p.val_accuracy >= floor)


def test_save_writes_report_json_and_code_that_rebuilds_the_chosen_model(
    result: Compression, tmp_path: Path
) -> None:
    html = result.save(tmp_path)
    page = html.read_text()
    assert 'id="fig-compression-tradeoff"' in page and "Pareto front" in page
    assert page.count("<td>prune_structured</td>") == 1  # one row per point in the table
    data = load_result(tmp_path / "compression.json")
    assert data["baseline"]["connections"] == result.baseline.connections
    assert len(data["points"]) == len(result.points)
    assert json.loads(json.dumps(data)) == data
    namespace: dict[str, Any] = {"__file__": str(tmp_path / "rebuild_chosen.py")}
    exec((tmp_path / "rebuild_chosen.py").read_text(), namespace)
    rebuilt = namespace["build"]()
    x = torch.randn(6, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), result.chosen.model.eval()(x))


# -- bad input --------------------------------------------------------------------------------


def test_an_unknown_method_is_named_with_the_methods_that_exist() -> None:
    with pytest.raises(
        ValueError,
        match="unknown compression method 'prunee'; the methods are "
        "prune, prune_structured, low_rank, quantize, distill",
    ):
        dd.compress(digits_experiment(), methods=("prunee",))


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.2])
def test_a_strength_outside_zero_one_is_refused_before_any_work(bad: float) -> None:
    with pytest.raises(ValueError, match=r"strictly between 0 and 1 .*got "):
        dd.compress(digits_experiment(), methods=("prune",), strengths=(0.5, bad))


class Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :10] * self.gain


def test_a_model_with_nothing_to_compress_is_refused() -> None:
    with pytest.raises(ValueError, match="no weight with two or more axes .*nothing to compress"):
        dd.compress(digits_experiment(Scale), methods=("prune",))


class FixedView(nn.Module):
    """A forward with a width written into it: structured pruning breaks it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 32)
        self.out = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc(x)).view(-1, 32))


def test_a_model_torch_pruning_cannot_handle_is_skipped_and_the_others_run() -> None:
    res = dd.compress(
        digits_experiment(FixedView, steps=20),
        methods=("prune_structured", "prune"),
        strengths=(0.5,),
        finetune_steps=2,
        timing=0.002,
    )
    (skip,) = res.skipped
    assert skip.method == "prune_structured"
    assert "forward failed" in skip.reason and "cannot be pruned structurally" in skip.reason
    assert [p.method for p in res.points] == ["prune"]


class ConvOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 10, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


def test_a_model_torchao_cannot_quantise_is_skipped_and_the_others_run() -> None:
    res = dd.compress(
        digits_experiment(ConvOnly, steps=10, flatten=False),
        methods=("quantize", "low_rank"),
        strengths=(0.5,),
        finetune_steps=2,
        timing=0.002,
    )
    assert [(s.method, s.reason) for s in res.skipped] == [
        (
            "quantize",
            "torchao's int8 configurations quantise nn.Linear layers and this model has none",
        )
    ]
    assert [p.method for p in res.points] == ["low_rank"]
    assert not math.isnan(res.points[0].val_loss)


# -- the command line -------------------------------------------------------------------------


def test_cli_compresses_a_preset_and_writes_report_json_and_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from deepdoctor.cli import main

    args = ["compress", "preset:healthy-mlp-digits", "--steps", "20", "--methods", "prune,quantize"]
    args += ["--strengths", "0.5", "--finetune-steps", "2", "--timing", "0.002"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "compress healthy-mlp-digits: chosen:" in out and "wrote " in out
    data = json.loads((tmp_path / "compression.json").read_text())
    assert [p["method"] for p in data["points"]] == ["prune", "quantize", "quantize"]
    assert data["points"][0]["connections"] == data["baseline"]["connections"] // 2
    for name in ("report.html", "chosen_model.pt", "rebuild_chosen.py"):
        assert (tmp_path / name).is_file()


def test_cli_names_an_unknown_method_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from deepdoctor.cli import main

    assert main(["compress", "preset:healthy-mlp-digits", "--methods", "shrink"]) == 2
    err = capsys.readouterr().err
    assert "unknown compression method 'shrink'; the methods are prune," in err


# -- structure search -------------------------------------------------------------------------


def test_structure_search_is_nsga2_resumes_from_its_storage_and_returns_its_front(
    tmp_path: Path,
) -> None:
    import optuna

    exp = digits_experiment(steps=15)
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    kwargs: dict[str, Any] = dict(max_depth=2, max_width=16, storage=storage, timing=0.002)
    first = dd.search_structure(exp, n_trials=3, population_size=2, finetune_steps=3, **kwargs)
    assert isinstance(first.study.sampler, optuna.samplers.NSGAIISampler)
    assert len(first.trials) == 3
    resumed = dd.search_structure(exp, n_trials=4, population_size=2, finetune_steps=3, **kwargs)
    assert [t["number"] for t in resumed.trials] == [0, 1, 2, 3]  # one new trial, not four
    stored = {t["number"]: t for t in resumed.trials}
    assert {p.details["trial"] for p in resumed.points} <= set(stored)
    for point in resumed.points:
        assert nonzero_weights(point.model) == point.connections
        source = stored[point.details["trial"]]
        assert point.connections == source["connections"]
        # a front trial from the first session is retrained from its recipe: same numbers
        assert point.val_accuracy == pytest.approx(source["val_accuracy"], abs=1e-6)
    accs = [p.val_accuracy for p in resumed.points]
    conns = [p.connections for p in resumed.points]
    assert conns == sorted(conns) and accs == sorted(accs)  # a front: more weights, better

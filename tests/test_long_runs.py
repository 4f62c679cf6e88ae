"""A long run's Trace: older steps summarised in blocks, bounded in size, read the same way.

The tables of a Trace keep their newest rows exact and fold older ones into blocks (see
``deepdoctor.trace.Table``). These tests shrink the window so that a short run is "long",
and check the summary against a plain recount of the full rows.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import deepdoctor as dd
from deepdoctor import models
from deepdoctor.trace import Table, Trace


def _rows(n: int, seed: int = 0) -> list[dict[str, list[float]]]:
    """n rows of two statistics over three names, with NaN and an Inf among them."""
    rng = np.random.default_rng(seed)
    rows = []
    for step in range(n):
        x = rng.normal(size=3)
        y = [float(step), math.nan if step % 5 == 0 else float(x[1]), math.nan]
        if step == 400:
            y[0] = math.inf
        rows.append({"x": [float(v) for v in x], "y": y})
    return rows


def _pair(n: int, recent: int = 16, blocks: int = 8) -> tuple[Table, Table]:
    small = Table(["a", "b", "c"], ["x", "y"], recent=recent, blocks=blocks)
    full = Table(["a", "b", "c"], ["x", "y"], recent=None)
    for step, row in enumerate(_rows(n)):
        small.append(10 * step, row)
        full.append(10 * step, row)
    return small, full


def test_a_summarised_table_is_bounded_and_matches_a_recount_of_every_row() -> None:
    small, full = _pair(1000)
    assert small.summarised and not full.summarised
    assert len(full) == 1000 and len(small) <= 1 + 8 + 2 * 16
    first, last, count = small.spans()
    assert count.sum() == 1000 and first[0] == last[0] == 0 and count[0] == 1
    assert (first[1:] == last[:-1] + 10).all()  # the blocks tile the run, no gap
    assert small.steps[-16:] == full.steps[-16:]
    rows = {stat: full.array(stat) for stat in ("x", "y")}
    for stat, values in rows.items():
        summary = small.summary(stat)
        assert summary["mean"].shape == (len(small), 3)
        for i in range(len(small)):
            cells = values[(first[i] // 10) : (last[i] // 10) + 1]
            with warnings.catch_warnings():  # an all-NaN column: NaN, with a warning
                warnings.simplefilter("ignore", RuntimeWarning)
                expected = {
                    "mean": np.nanmean(cells, axis=0),
                    "min": np.nanmin(cells, axis=0),
                    "max": np.nanmax(cells, axis=0),
                    "last": cells[-1],
                }
            for part, want in expected.items():
                np.testing.assert_allclose(summary[part][i], want, rtol=1e-12, err_msg=part)
    # the first and the last steps are exact
    assert small.array("x")[0].tolist() == full.array("x")[0].tolist()
    assert small.array("x")[-16:].tolist() == full.array("x")[-16:].tolist()


def test_the_trace_accessors_keep_their_shapes_and_the_last_row_stays_writable() -> None:
    trace = Trace(["fc1", "fc2"], {"fc1": "Linear", "fc2": "Linear"}, recent=8, blocks=4)
    for step in range(300):
        trace.steps.append(step, {"loss": [1.0 / (step + 1)]})
        trace.layer.append(
            step, {"grad_norm_weight": [step, 2.0 * step], "grad_norm_bias": [math.nan, 1.0]}
        )
    n = len(trace.steps)
    assert trace.summarised and n <= 1 + 4 + 16
    assert trace.loss().shape == (n,) and trace.grad_norms().shape == (n, 2)
    assert trace.learning_speed().shape == (n, 2)
    assert trace.learning_speed()[-1].tolist() == [299.0, 1.0]  # no bias: the weight's norm
    assert trace.loss()[0] == 1.0 and trace.loss()[-1] == 1.0 / 300
    trace.steps.set_value("loss", -1, 0, 7.0)  # as the Probe's record_loss after the step
    assert trace.loss()[-1] == 7.0
    with pytest.raises(IndexError, match="is a summary of older steps"):
        trace.steps.set_value("loss", 1, 0, 7.0)
    d = json.loads(json.dumps(trace.to_dict(), allow_nan=False))
    assert d["tables"]["steps"]["steps"] == trace.steps.steps
    assert sum(d["tables"]["layers"]["spans"]["count"]) == 300


def test_a_summarised_trace_round_trips_and_goes_on_summarising(tmp_path: Path) -> None:
    trace = Trace(["fc"], {"fc": "Linear"}, recent=8, blocks=4)
    again = Trace(["fc"], {"fc": "Linear"}, recent=8, blocks=4)
    for step in range(200):
        for t in (trace, again):
            t.layer.append(step, {"grad_norm_weight": [math.sin(step)]})
    loaded = Trace.load(trace.save(tmp_path / "long"))
    assert loaded.layer == trace.layer and loaded.steps == trace.steps
    assert loaded.layer.steps == trace.layer.steps
    for step in range(200, 700):  # the loaded trace folds on as the original would have
        for t in (loaded, again):
            t.layer.append(step, {"grad_norm_weight": [math.sin(step)]})
    assert loaded.layer == again.layer and loaded.layer.block_len == again.layer.block_len


def test_a_format_2_trace_still_loads(tmp_path: Path) -> None:
    trace = Trace(["fc"], {"fc": "Linear"})
    trace.layer.append(3, {"grad_norm_weight": [0.5]})
    path = trace.save(tmp_path / "v2.npz")
    with np.load(path) as data:
        arrays = dict(data)
    header = json.loads(str(arrays["header"]))
    header["format_version"] = 2
    del header["table_sizes"]
    arrays["header"] = np.asarray(json.dumps(header))
    np.savez(path, **arrays)
    loaded = Trace.load(path)
    assert loaded.layer.steps == [3] and loaded.grad_norms().tolist() == [[0.5]]


def _replayed(trace: Trace, recent: int, blocks: int) -> Trace:
    """The same rows appended into a Trace that summarises after ``recent`` rows."""
    small = Trace(
        trace.layers,
        trace.layer_types,
        trace.act_layers,
        trace.act_kinds,
        trace.act_sources,
        weight_layers=trace.weight_layers,
        facts=trace.facts,
        recent=recent,
        blocks=blocks,
    )
    for (_, full), (_, into) in zip(trace.tables().items(), small.tables().items(), strict=True):
        values = {stat: full.array(stat) for stat in full.stats}
        for i, step in enumerate(full.steps):
            into.append(step, {stat: v[i].tolist() for stat, v in values.items()})
    return small


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_the_detectors_judge_a_summarised_long_run_as_the_full_one(activation: str) -> None:
    # 1,500 steps of a small MLP on digits, summarised after 64 rows into 32 blocks
    split = dd.data.load("digits")
    torch.manual_seed(0)
    init = "default" if activation == "sigmoid" else "he"
    model = models.mlp(64, 10, depth=6, width=16, activation=activation, init=init)
    result = dd.diagnose(
        model,
        (split.X_train, split.y_train),
        val=(split.X_val, split.y_val),
        steps=1500,
        batch_size=32,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
    )
    full = result.trace
    assert not full.summarised and full.n_steps == 1500
    small = _replayed(full, recent=64, blocks=32)
    assert small.summarised and small.n_steps <= 1 + 32 + 128
    kinds = {(f.kind, f.severity) for f in dd.detect(full)}
    assert kinds == {(f.kind, f.severity) for f in dd.detect(small)}
    assert kinds  # something to agree on

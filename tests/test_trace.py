"""Trace: exact save / load round trip, JSON-ready to_dict, and its reading helpers."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deepdoctor import models, training
from deepdoctor.probe import Probe
from deepdoctor.trace import FORMAT_VERSION, LAYER_STATS, Table, Trace

Data = tuple[torch.Tensor, torch.Tensor]


def _probed_trace(blobs: Data) -> Trace:
    torch.manual_seed(0)
    # a bias-free layer gives NaN bias-gradient norms; every=3 leaves sampled tables shorter
    model = models.mlp(10, 3, depth=2, width=8, activation="sigmoid", bias=False)
    with Probe(model, every=3) as probe:
        training.train(model, blobs, val=blobs, steps=7, eval_every=3, probe=probe)
    probe.trace.meta.update(task="classification", nested={"a": [1, 2.5, None], "nan": math.nan})
    return probe.trace


def _assert_same(a: Trace, b: Trace) -> None:
    assert a.layers == b.layers and a.act_layers == b.act_layers
    assert a.layer_types == b.layer_types and a.act_kinds == b.act_kinds
    assert a.act_sources == b.act_sources
    assert json.dumps(a.meta, sort_keys=True) == json.dumps(b.meta, sort_keys=True)
    for (name, ta), (_, tb) in zip(a.tables().items(), b.tables().items(), strict=True):
        assert ta.names == tb.names and ta.stats == tb.stats, name
        assert ta.steps == tb.steps, name
        for stat in ta.stats:
            # bit for bit, NaN included
            assert ta.array(stat).tobytes() == tb.array(stat).tobytes(), (name, stat)


def test_save_load_round_trip_is_exact(blobs: Data, tmp_path: Path) -> None:
    trace = _probed_trace(blobs)
    assert np.isnan(trace.layer.array("grad_norm_bias")).all()
    assert trace.acts.steps == [0, 3, 6] and trace.evals.steps == [3, 6, 7]
    path = trace.save(tmp_path / "run" / "trace.npz")
    loaded = Trace.load(path)
    _assert_same(trace, loaded)
    assert loaded.meta["nested"] == {"a": [1, 2.5, None], "nan": loaded.meta["nested"]["nan"]}
    assert math.isnan(loaded.meta["nested"]["nan"])
    assert isinstance(loaded.layer.rows["grad_norm_weight"][0][0], float)


def test_a_hand_built_trace_with_nan_and_inf_round_trips(tmp_path: Path) -> None:
    trace = Trace(
        ["b", "a"],
        {"b": "Linear", "a": "Conv2d"},
        ["act"],
        {"act": "relu"},
        {"act": "b"},
        {"frozen_parameters": ["x.weight"]},
    )
    trace.layer.append(0, {"grad_norm_weight": [1e-40, math.inf], "weight_norm": [1.0, 2.0]})
    trace.layer.append(5, {"grad_norm_weight": [-math.inf, 0.1 + 0.2]})
    trace.steps.append(0, {"loss": [math.nan]})
    path = trace.save(tmp_path / "hand")  # the suffix is added ...
    assert path.name == "hand.npz"
    loaded = Trace.load(tmp_path / "hand")  # ... and found again
    _assert_same(trace, loaded)
    assert loaded.layers == ["b", "a"]  # the order is kept, not sorted
    assert loaded.layer.rows["grad_norm_weight"][1][1] == 0.1 + 0.2
    assert math.isnan(loaded.layer.rows["grad_norm_bias"][0][0])  # missing stats are NaN


def test_an_empty_trace_round_trips(tmp_path: Path) -> None:
    trace = Trace(["fc"], {"fc": "Linear"})
    _assert_same(trace, Trace.load(trace.save(tmp_path / "empty.npz")))


def test_to_dict_is_json_ready(blobs: Data) -> None:
    trace = _probed_trace(blobs)
    trace.meta["numpy"] = np.float32(1.5)
    d = trace.to_dict()
    text = json.dumps(d, allow_nan=False)  # no NaN, no numpy scalar survives
    back = json.loads(text)
    assert back["layers"] == trace.layers and back["format_version"] == FORMAT_VERSION
    assert back["tables"]["layers"]["grad_norm_bias"][0] == [None, None, None]
    assert back["tables"]["layers"]["grad_norm_weight"] == trace.layer.rows["grad_norm_weight"]
    assert back["tables"]["evals"]["steps"] == [3, 6, 7]
    assert back["meta"]["nested"] == {"a": [1, 2.5, None], "nan": None}
    assert back["meta"]["numpy"] == 1.5


def test_learning_speed_falls_back_to_the_weight_gradient_without_a_bias() -> None:
    trace = Trace(["with_bias", "no_bias"], {"with_bias": "Linear", "no_bias": "Linear"})
    trace.layer.append(0, {"grad_norm_weight": [3.0, 4.0], "grad_norm_bias": [0.5, math.nan]})
    assert trace.learning_speed().tolist() == [[0.5, 4.0]]
    assert trace.grad_norms().tolist() == [[3.0, 4.0]]
    assert repr(trace) == "Trace(0 steps, 2 layers, 0 activation modules)"


def test_bad_rows_and_files_are_clear_errors(tmp_path: Path) -> None:
    trace = Trace(["a", "b"], {"a": "Linear", "b": "Linear"})
    with pytest.raises(ValueError, match="row for 'weight_norm' has 1 values, expected 2"):
        trace.layer.append(0, {"weight_norm": [1.0]})
    assert len(trace.layer) == 0 and trace.layer.rows["grad_norm_weight"] == []  # all or nothing
    with pytest.raises(KeyError, match="no statistic 'speed'; this table has: grad_norm_weight"):
        trace.layer.array("speed")
    with pytest.raises(FileNotFoundError, match="no trace at .*nothing.npz"):
        Trace.load(tmp_path / "nothing.npz")
    path = trace.save(tmp_path / "old.npz")
    with np.load(path) as data:
        arrays = dict(data)
    header = json.loads(str(arrays["header"]))
    header["format_version"] = 99
    arrays["header"] = np.asarray(json.dumps(header))
    np.savez(path, **arrays)
    message = "has trace format 99, and this deepdoctor reads formats 1, 2, 3: load it with"
    with pytest.raises(ValueError, match=message):
        Trace.load(path)


def _deep_size(obj: object, seen: set[int]) -> int:
    """Bytes held by ``obj`` and what it refers to (dicts, lists, attributes), once each."""
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(_deep_size(k, seen) + _deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, list | tuple):
        size += sum(_deep_size(v, seen) for v in obj)
    elif hasattr(obj, "__dict__"):
        size += _deep_size(vars(obj), seen)
    return size


def test_a_stored_value_costs_about_8_bytes() -> None:
    names = [f"layer{i}" for i in range(11)]
    trace = Trace(names, dict.fromkeys(names, "Linear"))
    rows = [[step + i / 16 for i in range(len(names))] for step in range(1000)]
    for step, row in enumerate(rows):
        trace.layer.append(step, {"grad_norm_weight": row, "weight_norm": row})
    values = 1000 * len(names) * len(LAYER_STATS)  # grad_norm_bias is stored too, as NaN
    seen = {id(name) for name in names}  # the layer names are the trace's, not the table's
    # float64 buffers: 8 bytes a value plus growth slack and the step list; lists of
    # Python floats, one per row, held these same rows in 27 bytes a value
    assert _deep_size(trace.layer, seen) / values <= 16
    assert trace.layer.array("weight_norm").tolist() == rows


def test_set_value_and_set_stat_write_in_place() -> None:
    table = Table(["a", "b"], ["x"])
    for step in range(3):
        table.append(step, {"x": [float(step), 10.0 + step]})
    table.set_value("x", -1, 0, 7.5)  # the last step, as the Probe corrects its own row
    table.set_value("x", 0, 1, math.inf)
    assert table.rows["x"] == [[0.0, math.inf], [1.0, 11.0], [7.5, 12.0]]
    with pytest.raises(IndexError, match=r"no value \(3, 0\) in 'x': 3 steps x 2 names"):
        table.set_value("x", 3, 0, 1.0)
    table.set_stat("x", [[1.0, 2.0]] * 3)
    assert table.array("x").tolist() == [[1.0, 2.0]] * 3
    with pytest.raises(ValueError, match=r"must be \(steps, 2\)"):
        table.set_stat("x", [[1.0, 2.0, 3.0]])

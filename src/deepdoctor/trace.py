"""Trace: what a Probe saw, as columns of scalars per step and per layer.

A Trace never holds a tensor. Each table has a fixed list of column names (layers) and
grows by one row of floats per recorded step, so memory is
``steps x layers x statistics x 8 bytes`` however large the model is.

Tables (the column names of each are ``Trace.layers`` or ``Trace.act_layers``):

========== ============= ===================================================================
table      recorded      statistics
========== ============= ===================================================================
steps      every step    loss, lr, grad_norm_total, nonfinite_loss, nonfinite_grad,
                         nonfinite_weight (one value per step, no layer axis)
layers     every step    grad_norm_weight, grad_norm_bias, weight_norm
outputs    sampled       out_mean, out_std of every parameterised layer's output
updates    sampled       update_ratio = ||w_after - w_before|| / ||w_before||
acts       sampled       act_mean, act_std, dead_frac, saturated_frac, nonfinite
inputs     sampled       mean, std, feature_mean_absmax, feature_std_max, feature_std_min
evals      when told     train_loss, train_accuracy, val_loss, val_accuracy,
                         val_balanced_accuracy
========== ============= ===================================================================
"""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from .stats import ACT_STATS, INPUT_STATS, WEIGHT_LAYER_TYPE_NAMES

# 2: typed run facts (``Trace.facts``) and the weight layers; format 1 traces still load.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
TASKS = ("classification", "binary", "regression")


@dataclass
class RunFacts:
    """What the detectors need beyond the per-step statistics, written by whoever knows it.

    ``diagnose`` and the training loop fill these in from the data and the run; in a loop of
    your own the Probe fills in the task, the classes and their counts from
    ``probe.record_loss(loss, targets=y)`` and the outputs it sees. None means unknown, and
    a detector whose rule needs an unknown fact skips that rule.
    """

    task: str | None = None  # classification | binary | regression
    n_classes: int | None = None
    class_counts: list[int] | None = None  # training targets per class
    target_var: float | None = None  # variance of regression targets
    chance_loss: float | None = None  # loss of a calibrated start: ln(classes), or target var
    steps_planned: int | None = None
    batch_size: int | None = None
    seed: int | None = None
    stop_reason: str = "completed"  # completed | nonfinite_loss | loss_blowup | ...
    stop_step: int | None = None
    blowup_factor: float | None = None  # the loss multiple at which the run was stopped
    nonfinite_at: dict[str, Any] | None = None  # step, first_nonfinite_module, weights
    frozen_parameters: list[str] = field(default_factory=list)
    every: int | None = None  # the Probe's sampling interval
    # the best cheap model's score on the split (deepdoctor.reference), or {"skipped": why}
    reference: dict[str, Any] | None = None
    train_metrics: str | None = None  # how the train evaluations were measured (BN mode)

    def to_dict(self) -> dict[str, Any]:
        return json_ready(asdict(self))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunFacts:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def from_meta_v1(cls, meta: Mapping[str, Any]) -> RunFacts:
        """The facts a format-1 trace kept in its free-form ``meta``."""
        stopped = meta.get("stopped") or {}
        facts = cls.from_dict(meta)
        facts.stop_reason = stopped.get("reason") or "completed"
        facts.stop_step = stopped.get("step")
        if facts.task is None:
            facts.task = "classification" if meta.get("n_classes") else None
        return facts


class Table:
    """Rows of floats, one row per recorded step, one column per name (layer).

    Each statistic keeps its rows back to back in one growing float64 buffer
    (``array('d')``, which over-allocates by about 1/16 as it grows): 8 bytes a value,
    where a list of Python floats per row cost about 53 (a 24-byte float object, its
    8-byte pointer, a list header per row), 216 bytes per step per layer under the Probe.
    ``array(stat)`` gives the (steps, names) numpy array; ``set_value`` and ``set_stat``
    write in place.
    """

    def __init__(
        self,
        names: list[str],
        stats: list[str],
        steps: list[int] | None = None,
        rows: Mapping[str, Any] | None = None,
    ) -> None:
        self.names = names
        self.stats = stats
        self.steps: list[int] = [] if steps is None else steps
        self._buffers: dict[str, array[float]] = {stat: array("d") for stat in stats}
        for stat, values in (rows or {}).items():
            self.set_stat(stat, values)

    @property
    def rows(self) -> dict[str, list[list[float]]]:
        """Statistic -> its rows as lists of floats, ``rows[stat][i][j]`` value j of recorded
        step i: a copy for reading (write with ``set_value`` or ``set_stat``)."""
        return {stat: self.array(stat).tolist() for stat in self._buffers}

    def set_value(self, stat: str, i: int, j: int, value: float) -> None:
        """Overwrite value ``j`` of recorded step ``i`` (negative indices count from the end)."""
        n, width = len(self.steps), len(self.names)
        if not (-n <= i < n and -width <= j < width):
            raise IndexError(f"no value ({i}, {j}) in {stat!r}: {n} steps x {width} names")
        self._buffers[stat][i % n * width + j % width] = value

    def set_stat(self, stat: str, rows: Any) -> None:
        """Replace every row of ``stat`` with ``rows``, (recorded steps, names) values."""
        width = len(self.names)
        values = np.asarray(rows, dtype=np.float64)
        if values.size and (values.ndim != 2 or values.shape[1] != width):
            raise ValueError(f"rows for {stat!r} must be (steps, {width}), not {values.shape}")
        self._buffers[stat] = array("d", values.tobytes())

    def append(self, step: int, values: dict[str, list[float]]) -> None:
        """Add one row; a missing statistic is NaN. All or nothing: a bad row adds nothing."""
        width = len(self.names)
        new_rows = {}
        for stat in self.stats:
            row = values.get(stat)
            if row is None:
                new_rows[stat] = array("d", [math.nan]) * width
                continue
            if len(row) != width:
                raise ValueError(f"row for {stat!r} has {len(row)} values, expected {width}")
            # converts (or raises on) every value before any buffer is touched
            new_rows[stat] = array("d", row)
        for stat, new in new_rows.items():
            self._buffers[stat].extend(new)
        self.steps.append(int(step))

    def array(self, stat: str) -> np.ndarray:
        """The statistic as a (recorded steps, names) float64 array (a copy)."""
        if stat not in self._buffers:
            raise KeyError(f"no statistic {stat!r}; this table has: {', '.join(self.stats)}")
        # a copy, not np.frombuffer: a live view would stop the buffer from growing
        values = np.array(self._buffers[stat], dtype=np.float64)
        return values.reshape(len(self.steps), len(self.names))

    def step_array(self) -> np.ndarray:
        return np.asarray(self.steps, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.steps)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Table):
            return NotImplemented
        return (self.names, self.stats, self.steps, self._buffers) == (
            other.names,
            other.stats,
            other.steps,
            other._buffers,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Table({len(self.steps)} steps, {len(self.names)} names, stats={self.stats})"


STEP_STATS = [
    "loss",
    "lr",
    "grad_norm_total",
    "nonfinite_loss",
    "nonfinite_grad",
    "nonfinite_weight",
]
LAYER_STATS = ["grad_norm_weight", "grad_norm_bias", "weight_norm"]
OUTPUT_STATS = ["out_mean", "out_std"]
UPDATE_STATS = ["update_ratio"]
EVAL_STATS = [
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_balanced_accuracy",
]


class Trace:
    """Per-step, per-layer scalars recorded by a Probe (or built by hand in a test).

    ``layers``: modules that own trainable parameters, in forward order.
    ``layer_types``: the class name of each (``Linear``, ``Conv2d``, ``LSTM`` ...).
    ``act_layers``: activation modules (ReLU, Sigmoid, ...), in forward order.
    ``act_kinds``: their activation (``relu``, ``sigmoid`` ...).
    ``act_sources``: for each activation module, the parameterised layer that fed it.
    ``weight_layers``: the layers whose weight matrix or kernel mixes their input
    (``deepdoctor.stats.is_weight_layer``; by default judged from the type names).
    ``facts``: typed facts about the data and the run (``RunFacts``), read by the detectors.
    ``meta``: free-form JSON-ready notes of yours; no detector reads them.
    """

    def __init__(
        self,
        layers: list[str],
        layer_types: dict[str, str],
        act_layers: list[str] | None = None,
        act_kinds: dict[str, str] | None = None,
        act_sources: dict[str, str | None] | None = None,
        meta: dict[str, Any] | None = None,
        *,
        weight_layers: list[str] | None = None,
        facts: RunFacts | None = None,
    ) -> None:
        self.layers = list(layers)
        self.layer_types = dict(layer_types)
        self.act_layers = list(act_layers or [])
        self.act_kinds = dict(act_kinds or {})
        self.act_sources = dict(act_sources or {})
        self.meta: dict[str, Any] = dict(meta or {})
        self.weight_layers = (
            list(weight_layers)
            if weight_layers is not None
            else [n for n in self.layers if self.layer_types.get(n) in WEIGHT_LAYER_TYPE_NAMES]
        )
        self.facts = facts if facts is not None else RunFacts()
        self.steps = Table(["(model)"], STEP_STATS)
        self.layer = Table(self.layers, LAYER_STATS)
        self.outputs = Table(self.layers, OUTPUT_STATS)
        self.updates = Table(self.layers, UPDATE_STATS)
        self.acts = Table(self.act_layers, ACT_STATS)
        self.inputs = Table(["(input)"], INPUT_STATS)
        self.evals = Table(["(model)"], EVAL_STATS)

    # -- reading -------------------------------------------------------------------------

    def tables(self) -> dict[str, Table]:
        return {
            "steps": self.steps,
            "layers": self.layer,
            "outputs": self.outputs,
            "updates": self.updates,
            "acts": self.acts,
            "inputs": self.inputs,
            "evals": self.evals,
        }

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    def loss(self) -> np.ndarray:
        """The training loss per recorded step (NaN where it was not recorded)."""
        return self.steps.array("loss")[:, 0]

    def grad_norms(self) -> np.ndarray:
        """Weight-gradient norm, (steps, layers)."""
        return self.layer.array("grad_norm_weight")

    @overload
    def learning_speed(self, named: Literal[False] = False) -> np.ndarray: ...
    @overload
    def learning_speed(self, named: Literal[True]) -> dict[str, np.ndarray]: ...

    def learning_speed(self, named: bool = False) -> np.ndarray | dict[str, np.ndarray]:
        """Bias-gradient norm per layer, (steps, layers): Nielsen's "speed of learning".

        Layers without a bias fall back to their weight-gradient norm so that every layer
        has a speed. ``named=True`` gives ``{layer name: speed per step}`` instead, in
        ``trace.layers`` order (input first).
        """
        bias = self.layer.array("grad_norm_bias")
        weight = self.layer.array("grad_norm_weight")
        speed = np.where(np.isnan(bias), weight, bias)
        if named:
            return {name: speed[:, i] for i, name in enumerate(self.layers)}
        return speed

    def eval_metric(self, stat: str) -> tuple[np.ndarray, np.ndarray]:
        return self.evals.step_array(), self.evals.array(stat)[:, 0]

    # -- saving --------------------------------------------------------------------------

    def _header(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "layers": self.layers,
            "layer_types": self.layer_types,
            "act_layers": self.act_layers,
            "act_kinds": self.act_kinds,
            "act_sources": self.act_sources,
            "weight_layers": self.weight_layers,
            "facts": self.facts.to_dict(),
            "meta": self.meta,
        }

    def save(self, path: str | Path) -> Path:
        """Write the trace to ``path`` (a ``.npz`` file); ``Trace.load`` reads it back exactly."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"header": np.asarray(json.dumps(self._header()))}
        for tname, table in self.tables().items():
            arrays[f"{tname}/steps"] = table.step_array()
            for stat in table.stats:
                arrays[f"{tname}/{stat}"] = table.array(stat)
        np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
        return path

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        path = Path(path)
        if not path.exists() and path.suffix != ".npz":
            path = path.with_suffix(".npz")  # save() adds the suffix; accept the name without
        if not path.exists():
            raise FileNotFoundError(f"no trace at {path}; save one with Trace.save(path)")
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            version = header.get("format_version")
            if version not in READABLE_VERSIONS:
                raise ValueError(
                    f"{path} has trace format {version}, and this deepdoctor reads formats "
                    f"{', '.join(map(str, READABLE_VERSIONS))}: load it with the deepdoctor "
                    "that wrote it, or record the run again"
                )
            facts = (
                RunFacts.from_meta_v1(header["meta"])
                if version == 1
                else RunFacts.from_dict(header["facts"])
            )
            trace = cls(
                header["layers"],
                header["layer_types"],
                header["act_layers"],
                header["act_kinds"],
                header["act_sources"],
                header["meta"],
                weight_layers=header.get("weight_layers"),
                facts=facts,
            )
            for tname, table in trace.tables().items():
                table.steps = [int(s) for s in data[f"{tname}/steps"]]
                for stat in table.stats:
                    table.set_stat(stat, data[f"{tname}/{stat}"])
        return trace

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN and Inf become None, in the tables and in meta)."""

        out = self._header()
        out["meta"] = json_ready(self.meta)
        out["tables"] = {
            tname: {"steps": list(t.steps), **{s: json_ready(t.array(s).tolist()) for s in t.stats}}
            for tname, t in self.tables().items()
        }
        return out

    def __repr__(self) -> str:
        return (
            f"Trace({self.n_steps} steps, {len(self.layers)} layers, "
            f"{len(self.act_layers)} activation modules)"
        )


def json_ready(value: Any) -> Any:
    """A copy of ``value`` that JSON can hold: non-finite floats become None, numpy scalars
    and one-element tensors Python numbers. The one conversion every ``to_dict`` uses."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic) or (hasattr(value, "item") and callable(value.item)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

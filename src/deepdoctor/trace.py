"""Trace: what a Probe saw, as columns of scalars per step and per layer.

A Trace never holds a tensor. Each table has a fixed list of column names (layers) and
grows by one row of floats per recorded step, 8 bytes a value. A long run stays bounded:
each table keeps its newest 2,048 to 4,096 rows exact and older ones as at most 1,024
blocks of equal length (mean, min, max and last value of every statistic; the block length
doubles as the run goes on), the first row always exact (see ``Table``). So a table holds at
most ~5,000 rows of ``layers x statistics`` floats (plus 5 per block) however long the run;
the detectors and the plots read a summarised row, a block's mean, like any other.

Tables (the column names of each are ``Trace.layers`` or ``Trace.act_layers``):

========== ============= ===================================================================
table      recorded      statistics
========== ============= ===================================================================
steps      every step    loss, lr, grad_norm_total, nonfinite_loss, nonfinite_grad,
                         nonfinite_weight (one value per step, no layer axis)
layers     every step    grad_norm_weight, grad_norm_bias, weight_norm (measured on the
                         sampled steps and on steps with non-finite gradients, held between)
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

# 2: typed run facts (``Trace.facts``) and the weight layers; 3: older rows of a long run
# summarised in blocks (``Table``). Formats 1 and 2 still load.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
TASKS = ("classification", "binary", "regression")
# Learning speed "at the start" and "at the end": the mean over this many recorded steps, so
# one noisy batch does not decide it (the page and the terminal both read this one figure).
SPEED_WINDOW = 5


def speed_at_ends(speed: np.ndarray, steps: Any, window: int = SPEED_WINDOW) -> dict[str, Any]:
    """Each layer's learning speed at the start and the end of a run, JSON-ready.

    ``speed`` is (recorded steps, layers), ``steps`` the recorded step numbers. ``start`` and
    ``end`` are the mean of each layer's finite speeds over the first and the last
    ``window`` recorded steps (None where none was finite); ``start_steps`` and
    ``end_steps`` the first and last step each mean covers.
    """
    speed = np.asarray(speed, dtype=np.float64)
    steps = [int(s) for s in steps]
    n = min(window, len(steps))
    if n == 0 or speed.size == 0:
        return {"window": 0, "start_steps": [], "end_steps": [], "start": [], "end": []}

    def mean(block: np.ndarray) -> list[float | None]:
        finite = np.isfinite(block)
        count = finite.sum(axis=0)
        total = np.where(finite, block, 0.0).sum(axis=0)
        return [float(t / c) if c else None for t, c in zip(total, count, strict=True)]

    return {
        "window": n,
        "start_steps": [steps[0], steps[n - 1]],
        "end_steps": [steps[-n], steps[-1]],
        "start": mean(speed[:n]),
        "end": mean(speed[-n:]),
    }


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
    # per-position class targets (tokens, tags): (batch, time) against (batch, time, classes)
    targets_per_position: bool | None = None
    # a loss scaler (mixed precision): steps it skipped for Inf/NaN gradients, its scale
    skipped_steps: int | None = None
    loss_scale_start: float | None = None
    loss_scale_min: float | None = None
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
    frozen_layers: list[str] = field(default_factory=list)  # modules with no trainable parameter
    # fine-tuning (deepdoctor.pretrained): the layers said to be pretrained (None: not said),
    # and each trainable one's ||W - W_0|| / ||W_0|| after the first drift_steps steps
    pretrained_layers: list[str] | None = None
    pretrained_drift: dict[str, float] | None = None
    drift_steps: int | None = None
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


# How much of a long run a Table keeps exact, and how finely it summarises the rest.
RECENT_ROWS = 2048  # the newest rows, exact (the window holds up to twice as many)
SUMMARY_BLOCKS = 1024  # older rows, in at most this many blocks of equal length
BLOCK_PARTS = ("sum", "n", "min", "max", "last")  # what a block keeps of each value


class Summary:
    """Older rows of a Table, as blocks of consecutive rows.

    Per block: its first and last step and how many rows it covers; per statistic and name:
    the sum and the number of values that were not NaN (so the means of two blocks merge
    exactly), the minimum, the maximum and the last value. The first block is the table's
    first row alone and never merges, so the first step stays exact. The other blocks hold
    ``length`` rows each, except the newest, which may still be filling.
    """

    def __init__(self, width: int, stats: list[str]) -> None:
        self.first = np.zeros(0, dtype=np.int64)
        self.last = np.zeros(0, dtype=np.int64)
        self.count = np.zeros(0, dtype=np.int64)
        self.parts = {s: {p: np.zeros((0, width)) for p in BLOCK_PARTS} for s in stats}

    def __len__(self) -> int:
        return len(self.count)

    def add_rows(self, steps: list[int], rows: dict[str, np.ndarray], length: int) -> None:
        """Fold exact ``rows`` (statistic -> (n, width)) in, ``length`` rows to a block (the
        newest block, if it is not full yet, first)."""
        step = np.asarray(steps, dtype=np.int64)
        first, last, count = step, step.copy(), np.ones(len(step), dtype=np.int64)
        parts = {stat: _as_blocks(values) for stat, values in rows.items()}
        keep = len(self)
        if keep > 1 and self.count[-1] < length:  # top up the newest block
            keep -= 1
            first = np.concatenate([self.first[keep:], first])
            last = np.concatenate([self.last[keep:], last])
            count = np.concatenate([self.count[keep:], count])
            parts = {
                stat: {p: np.concatenate([self.parts[stat][p][keep:], v]) for p, v in new.items()}
                for stat, new in parts.items()
            }
        starts = _group_starts(count, length)
        self._truncate(keep)
        self.first = np.concatenate([self.first, first[starts]])
        self.last = np.concatenate([self.last, last[_ends(starts, len(count))]])
        self.count = np.concatenate([self.count, np.add.reduceat(count, starts)])
        for stat, new in parts.items():
            old, merged = self.parts[stat], _reduce(new, starts)
            self.parts[stat] = {p: np.concatenate([old[p], merged[p]]) for p in old}

    def regroup(self, length: int) -> None:
        """Merge the blocks after the first into blocks of ``length`` rows."""
        starts = 1 + _group_starts(self.count[1:], length)
        ends = _ends(starts, len(self))
        self.first = np.concatenate([self.first[:1], self.first[starts]])
        self.last = np.concatenate([self.last[:1], self.last[ends]])
        self.count = np.concatenate([self.count[:1], np.add.reduceat(self.count, starts)])
        for stat, parts in self.parts.items():
            merged = _reduce(parts, starts)
            self.parts[stat] = {p: np.concatenate([parts[p][:1], merged[p]]) for p in parts}

    def _truncate(self, n: int) -> None:
        self.first, self.last, self.count = self.first[:n], self.last[:n], self.count[:n]
        for stat, parts in self.parts.items():
            self.parts[stat] = {p: v[:n] for p, v in parts.items()}

    def steps(self) -> list[int]:
        """Each block's step: the step itself for one row, else the middle of its span."""
        mid = np.where(self.count == 1, self.first, (self.first + self.last) // 2)
        return [int(s) for s in mid]

    def mean(self, stat: str) -> np.ndarray:
        parts = self.parts[stat]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(parts["n"] > 0, parts["sum"] / parts["n"], math.nan)

    def part(self, stat: str, part: str) -> np.ndarray:
        values = self.parts[stat][part]
        if part in ("min", "max"):
            return np.where(self.parts[stat]["n"] > 0, values, math.nan)
        return values.copy()


def _group_starts(count: np.ndarray, length: int) -> np.ndarray:
    """Where each group of ``length`` rows begins, for blocks of ``count`` rows each."""
    if not len(count):
        return np.zeros(0, dtype=np.int64)
    group = (np.cumsum(count) - count) // length
    return np.flatnonzero(np.diff(group, prepend=-1))


def _ends(starts: np.ndarray, n: int) -> np.ndarray:
    """The last index of each segment that begins at ``starts`` (of ``n`` items)."""
    return np.append(starts[1:], n) - 1


def _as_blocks(values: np.ndarray) -> dict[str, np.ndarray]:
    """Exact rows as blocks of one row each."""
    present = ~np.isnan(values)
    return {
        "sum": np.where(present, values, 0.0),
        "n": present.astype(np.float64),
        "min": np.where(present, values, math.inf),
        "max": np.where(present, values, -math.inf),
        "last": values,
    }


def _reduce(parts: dict[str, np.ndarray], starts: np.ndarray) -> dict[str, np.ndarray]:
    """Blocks merged into one per segment beginning at ``starts``."""
    if not len(starts):
        return {p: v[:0] for p, v in parts.items()}
    return {
        "sum": np.add.reduceat(parts["sum"], starts, axis=0),
        "n": np.add.reduceat(parts["n"], starts, axis=0),
        "min": np.minimum.reduceat(parts["min"], starts, axis=0),
        "max": np.maximum.reduceat(parts["max"], starts, axis=0),
        "last": parts["last"][_ends(starts, len(parts["last"]))],
    }


class Table:
    """Rows of floats, one row per recorded step, one column per name (layer).

    The newest rows are exact: each statistic keeps them back to back in one growing
    float64 buffer (``array('d')``, 8 bytes a value). So that a long run's table stays
    bounded, once ``2 * recent`` exact rows have piled up, the oldest ``recent`` of them are
    folded into a ``Summary`` of blocks of equal length (mean, min, max and last value of
    each statistic); when there are more than ``blocks`` blocks, pairs merge and the block
    length doubles. The first row is a block of its own and never merges: the first and
    the last steps are always exact. A table holds at most ``1 + blocks + 2 * recent`` rows
    however long the run; ``recent=None`` keeps every row exact.

    Reading is the same either way: ``array(stat)`` gives the (rows, names) values, a
    summarised row holding its block's mean (NaN values skipped), ``steps`` its step (the
    middle of the block); ``summary(stat)`` gives the min, max and last too, ``spans()``
    the steps each row covers. ``set_value`` and ``set_stat`` write exact rows in place.
    """

    def __init__(
        self,
        names: list[str],
        stats: list[str],
        steps: list[int] | None = None,
        rows: Mapping[str, Any] | None = None,
        *,
        recent: int | None = RECENT_ROWS,
        blocks: int = SUMMARY_BLOCKS,
    ) -> None:
        if recent is not None and (recent < 1 or blocks < 1):
            raise ValueError(f"recent and blocks must be >= 1, got {recent} and {blocks}")
        self.names = names
        self.stats = stats
        self.recent = recent
        self.blocks = blocks
        self.block_len = max(1, (recent or 1) // blocks)  # rows per block (doubles)
        self._steps: list[int] = [] if steps is None else list(steps)
        self._buffers: dict[str, array[float]] = {stat: array("d") for stat in stats}
        self._summary: Summary | None = None
        for stat, values in (rows or {}).items():
            self.set_stat(stat, values)

    @property
    def steps(self) -> list[int]:
        """The step of each row (a copy): summarised rows first, then the exact ones."""
        if self._summary is None:
            return list(self._steps)
        return self._summary.steps() + self._steps

    @steps.setter
    def steps(self, steps: list[int]) -> None:
        if self._summary is not None:
            raise ValueError("a summarised table's steps cannot be replaced")
        self._steps = [int(s) for s in steps]

    @property
    def summarised(self) -> bool:
        """True once older rows have been folded into blocks."""
        return self._summary is not None and bool((self._summary.count > 1).any())

    @property
    def rows(self) -> dict[str, list[list[float]]]:
        """Statistic -> its rows as lists of floats, ``rows[stat][i][j]`` value j of row i:
        a copy for reading (write with ``set_value`` or ``set_stat``)."""
        return {stat: self.array(stat).tolist() for stat in self._buffers}

    def set_value(self, stat: str, i: int, j: int, value: float) -> None:
        """Overwrite value ``j`` of exact row ``i`` (negative indices count from the end)."""
        n, width = len(self), len(self.names)
        if not (-n <= i < n and -width <= j < width):
            raise IndexError(f"no value ({i}, {j}) in {stat!r}: {n} steps x {width} names")
        k = i % n - (n - len(self._steps))
        if k < 0:
            raise IndexError(f"row {i} of {stat!r} is a summary of older steps, not one step")
        self._buffers[stat][k * width + j % width] = value

    def set_stat(self, stat: str, rows: Any) -> None:
        """Replace every row of ``stat`` with ``rows``, (rows, names) values."""
        if self._summary is not None:
            raise ValueError(f"a summarised table's {stat!r} cannot be replaced")
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
        self._steps.append(int(step))
        if self.recent is not None and len(self._steps) >= 2 * self.recent:
            self._fold()

    def _fold(self) -> None:
        """Move the oldest ``recent`` exact rows (and the first row) into the summary."""
        assert self.recent is not None
        width = len(self.names)
        if self._summary is None:
            self._summary = Summary(width, self.stats)
            self._move(1, 1)  # the first row: a block of its own, for good
        self._move(self.recent, self.block_len)
        while len(self._summary) - 1 > self.blocks:
            self.block_len *= 2
            self._summary.regroup(self.block_len)

    def _move(self, n: int, length: int) -> None:
        """Fold the oldest ``n`` exact rows into blocks of ``length`` rows."""
        assert self._summary is not None
        width = len(self.names)
        rows = {}
        for stat, buf in self._buffers.items():
            values = np.frombuffer(buf, dtype=np.float64, count=n * width).reshape(n, width)
            rows[stat] = values.copy()  # before the buffer is replaced
            self._buffers[stat] = buf[n * width :]
        self._summary.add_rows(self._steps[:n], rows, length)
        del self._steps[:n]

    def array(self, stat: str) -> np.ndarray:
        """The statistic as a (rows, names) float64 array (a copy); a summarised row holds
        its block's mean."""
        if stat not in self._buffers:
            raise KeyError(f"no statistic {stat!r}; this table has: {', '.join(self.stats)}")
        # a copy, not np.frombuffer: a live view would stop the buffer from growing
        values = np.array(self._buffers[stat], dtype=np.float64)
        values = values.reshape(len(self._steps), len(self.names))
        if self._summary is None:
            return values
        return np.concatenate([self._summary.mean(stat), values])

    def summary(self, stat: str) -> dict[str, np.ndarray]:
        """``mean``, ``min``, ``max`` and ``last`` of ``stat`` per row, each (rows, names);
        for an exact row all four are its value."""
        exact = self.array(stat)[len(self) - len(self._steps) :]
        if self._summary is None:
            return {part: exact.copy() for part in ("mean", "min", "max", "last")}
        out = {"mean": self.array(stat)}
        for part in ("min", "max", "last"):
            out[part] = np.concatenate([self._summary.part(stat, part), exact])
        return out

    def spans(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: the first and the last step it covers and how many rows it summarises
        (1 for an exact row)."""
        steps = np.asarray(self._steps, dtype=np.int64)
        ones = np.ones(len(steps), dtype=np.int64)
        if self._summary is None:
            return steps, steps.copy(), ones
        s = self._summary
        return (
            np.concatenate([s.first, steps]),
            np.concatenate([s.last, steps]),
            np.concatenate([s.count, ones]),
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """What ``Trace.save`` writes of this table: the exact rows (``steps`` and one
        (rows, names) array per statistic) and, once summarised, the blocks."""
        out: dict[str, np.ndarray] = {"steps": np.asarray(self._steps, dtype=np.int64)}
        width = len(self.names)
        for stat, buf in self._buffers.items():
            out[stat] = np.array(buf, dtype=np.float64).reshape(len(self._steps), width)
        s = self._summary
        if s is not None:
            out.update({"blocks/first": s.first, "blocks/last": s.last, "blocks/count": s.count})
            for stat, parts in s.parts.items():
                out.update({f"blocks/{stat}/{p}": v for p, v in parts.items()})
        return out

    def load_arrays(self, arrays: Mapping[str, np.ndarray], block_len: int | None = None) -> None:
        """Put back what ``to_arrays`` gave (an older trace file has no blocks)."""
        self._summary = None
        self.steps = [int(s) for s in arrays["steps"]]
        for stat in self.stats:
            self.set_stat(stat, arrays[stat])
        if "blocks/count" not in arrays:
            return
        s = self._summary = Summary(len(self.names), self.stats)
        s.first, s.last = arrays["blocks/first"], arrays["blocks/last"]
        s.count = arrays["blocks/count"]
        s.parts = {st: {p: arrays[f"blocks/{st}/{p}"] for p in BLOCK_PARTS} for st in self.stats}
        self.block_len = block_len or self.block_len

    def step_array(self) -> np.ndarray:
        return np.asarray(self.steps, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._steps) + (0 if self._summary is None else len(self._summary))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Table):
            return NotImplemented
        if (self.names, self.stats) != (other.names, other.stats):
            return False
        mine, theirs = self.to_arrays(), other.to_arrays()
        return mine.keys() == theirs.keys() and all(  # NaN equals NaN here
            np.array_equal(mine[k], theirs[k], equal_nan=k != "steps") for k in mine
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Table({len(self)} steps, {len(self.names)} names, stats={self.stats})"


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
    ``recent`` / ``blocks``: how much of a long run each table keeps exact, and in how many
    blocks it summarises the older rows (see ``Table``; ``recent=None`` keeps every row).
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
        recent: int | None = RECENT_ROWS,
        blocks: int = SUMMARY_BLOCKS,
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

        def table(names: list[str], stats: list[str]) -> Table:
            return Table(names, stats, recent=recent, blocks=blocks)

        self.steps = table(["(model)"], STEP_STATS)
        self.layer = table(self.layers, LAYER_STATS)
        self.outputs = table(self.layers, OUTPUT_STATS)
        self.updates = table(self.layers, UPDATE_STATS)
        self.acts = table(self.act_layers, ACT_STATS)
        self.inputs = table(["(input)"], INPUT_STATS)
        self.evals = table(["(model)"], EVAL_STATS)

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
        """Rows of the steps table: the steps recorded, until a long run is summarised."""
        return len(self.steps)

    @property
    def summarised(self) -> bool:
        """True when a table holds blocks of older steps (means) besides exact rows."""
        return any(t.summarised for t in self.tables().values())

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

    def learning_speed_at_ends(self, window: int = SPEED_WINDOW) -> dict[str, Any]:
        """Each layer's learning speed at the start and the end of the run (``speed_at_ends``),
        with the layer names: what a Diagnosis stores and every view of it shows."""
        ends = speed_at_ends(self.learning_speed(), self.layer.step_array(), window)
        return {"layers": list(self.layers), **ends}

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
            "table_sizes": {
                name: {"recent": t.recent, "blocks": t.blocks, "block_len": t.block_len}
                for name, t in self.tables().items()
            },
        }

    def save(self, path: str | Path) -> Path:
        """Write the trace to ``path`` (a ``.npz`` file); ``Trace.load`` reads it back exactly."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"header": np.asarray(json.dumps(self._header()))}
        for tname, table in self.tables().items():
            arrays.update({f"{tname}/{k}": v for k, v in table.to_arrays().items()})
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
            sizes: dict[str, dict[str, Any]] = header.get("table_sizes", {})
            first = next(iter(sizes.values()), {})
            trace = cls(
                header["layers"],
                header["layer_types"],
                header["act_layers"],
                header["act_kinds"],
                header["act_sources"],
                header["meta"],
                weight_layers=header.get("weight_layers"),
                facts=facts,
                recent=first.get("recent", RECENT_ROWS),
                blocks=first.get("blocks", SUMMARY_BLOCKS),
            )
            for tname, table in trace.tables().items():
                prefix = f"{tname}/"
                arrays = {k[len(prefix) :]: data[k] for k in data.files if k.startswith(prefix)}
                table.load_arrays(arrays, sizes.get(tname, {}).get("block_len"))
        return trace

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN and Inf become None, in the tables and in meta)."""

        out = self._header()
        out["meta"] = json_ready(self.meta)
        out["tables"] = {tname: _table_dict(t) for tname, t in self.tables().items()}
        return out

    def __repr__(self) -> str:
        return (
            f"Trace({self.n_steps} steps, {len(self.layers)} layers, "
            f"{len(self.act_layers)} activation modules)"
        )


def _table_dict(table: Table) -> dict[str, Any]:
    """A table for ``to_dict``: steps and the values per statistic (block means for
    summarised rows); a summarised table adds the steps and rows each row covers."""
    out: dict[str, Any] = {"steps": table.steps}
    out.update({s: json_ready(table.array(s).tolist()) for s in table.stats})
    if table.summarised:
        first, last, count = table.spans()
        out["spans"] = {"first": first.tolist(), "last": last.tolist(), "count": count.tolist()}
    return out


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

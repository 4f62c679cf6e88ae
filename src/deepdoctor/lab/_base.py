"""What every lab experiment is made of, and the CSV log that makes a sweep resumable.

An experiment is a sweep: a list of configurations (small dicts such as ``{"depth": 10,
"setup": "relu+he"}``), a function that runs one configuration and returns a row of numbers,
and a function that reads all the rows and concludes: is the published claim supported here?

The runner appends each finished configuration's row to ``NAME.csv`` at once and flushes it,
so an interrupted sweep loses at most the configuration it was running; on the next start
the rows already in the file are skipped.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn

from .. import data
from ..training import History, train

Config = dict[str, Any]  # the settings that identify one run of a sweep
Row = dict[str, Any]  # a configuration plus what its run measured

VERDICTS = ("supported", "partly supported", "not reproduced")


@dataclass(frozen=True)
class Settings:
    """How to run an experiment: the quick variant (seconds) or the full one (minutes)."""

    quick: bool = False
    seed: int = 0
    data_root: str | None = None

    @property
    def variant(self) -> str:
        return "quick" if self.quick else "full"


@dataclass
class Conclusion:
    """What a sweep showed, in words and numbers, with the figures that show it."""

    verdict: str  # one of VERDICTS
    summary: str  # the paragraph: the claim, the numbers, and whether they support it
    table: list[Row]  # the key numbers, one row per setting compared
    figures: list[tuple[str, Figure]] = field(default_factory=list)  # (caption, figure)
    published: list[Row] = field(default_factory=list)  # the paper's numbers, where it gives some
    numbers: dict[str, Any] = field(default_factory=dict)  # key numbers, for JSON and the tests

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}; got {self.verdict!r}")


@dataclass(frozen=True)
class Lab:
    """One experiment: what it claims, the sweep, one run, and the conclusion."""

    name: str
    title: str
    source: str  # where the claim comes from
    claim: str  # the published result, in one or two sentences
    configs: Callable[[Settings], list[Config]]
    run_one: Callable[[Config, Settings], Row]
    conclude: Callable[[list[Row], Settings], Conclusion]
    full_note: str = ""  # how the full variant departs from the paper's setting, and why


# -- the resumable CSV ----------------------------------------------------------------------


def encode(value: Any) -> str:
    """A CSV cell: strings as they are, everything else as JSON (lists, None, NaN, bools)."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return json.dumps(value)


def decode(cell: str) -> Any:
    try:
        return json.loads(cell)
    except ValueError:
        return cell


class SweepLog:
    """Rows of a sweep in a CSV file, appended and flushed one configuration at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: list[str] | None = None
        self._raw: list[dict[str, str]] = []
        if path.exists() and path.stat().st_size > 0:
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or [])
                self._raw = [r for r in reader if None not in r and None not in r.values()]

    @staticmethod
    def _key(cells: dict[str, str], keys: Sequence[str]) -> tuple[str, ...]:
        return tuple(cells.get(k, "") for k in keys)

    def done(self, config: Config) -> bool:
        return self.find(config) is not None

    def find(self, config: Config) -> Row | None:
        want = tuple(encode(v) for v in config.values())
        for r in self._raw:
            if self._key(r, list(config)) == want:
                return {k: decode(v) for k, v in r.items()}
        return None

    def append(self, row: Row) -> None:
        cells = {k: encode(v) for k, v in row.items()}
        if self.columns is None:
            self.columns = list(cells)
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, self.columns).writeheader()
        elif set(cells) != set(self.columns):
            raise ValueError(
                f"{self.path} holds rows with other columns ({', '.join(self.columns)}) than "
                f"this run writes ({', '.join(cells)}): it comes from another version of the "
                "experiment; delete it or pass another --out"
            )
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow(cells)
            f.flush()
        self._raw.append(cells)


# -- helpers the experiments share ----------------------------------------------------------


@lru_cache(maxsize=16)
def load_split(name: str, **options: Any) -> data.Split:
    """``data.load`` once per process: MNIST-1D takes a few seconds to generate."""
    return data.load(name, **options)


def fit(model: nn.Module, train_data: Any, val_data: Any = None, **kwargs: Any) -> History:
    """``training.train`` that lets Ctrl-C through, so an interrupted run is not logged as done."""
    history = train(model, train_data, val_data, **kwargs)
    if history.stopped == "interrupted":
        raise KeyboardInterrupt
    return history


def final_metrics(history: History) -> dict[str, float]:
    """train/val loss and accuracy at the end of a run (NaN for a run that went non-finite)."""
    final = history.final
    keys = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
    out = {k: float(final.get(k, math.nan)) for k in keys}
    if history.stopped == "nonfinite_loss":
        out["train_loss"] = out["val_loss"] = math.inf
    return out


WeightLayer = nn.Linear | nn.Conv1d | nn.Conv2d


def weight_layers(model: nn.Module) -> list[WeightLayer]:
    """Modules holding a weight matrix or kernel, in registration (= forward) order."""
    return [m for m in model.modules() if isinstance(m, WeightLayer) and m.weight.requires_grad]


def gradient_flow(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[..., torch.Tensor] | None = None,
) -> list[float]:
    """Weight-gradient norm of every weight layer after one backward pass on (X, y)."""
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    model.zero_grad(set_to_none=True)
    loss_fn(model(X), y).backward()
    norms = [
        float(m.weight.grad.norm()) if m.weight.grad is not None else 0.0
        for m in weight_layers(model)
    ]
    model.zero_grad(set_to_none=True)
    return norms


def log10_ratio(first: float, last: float) -> float:
    """log10(first / last), with 0 gradients mapped to -inf / +inf rather than an error."""
    if not (math.isfinite(first) and math.isfinite(last)):
        return math.nan
    if first <= 0:
        return -math.inf
    if last <= 0:
        return math.inf
    return math.log10(first / last)


def fmt(value: float, digits: int = 3) -> str:
    """A number for prose and tables: NaN and Inf spelled out, no spurious precision."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}"


def pct(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def new_figure(width: float = 6.4, height: float = 4.0, cols: int = 1) -> tuple[Figure, Any]:
    """A pyplot-free matplotlib figure (no global state, no display needed) and its axes."""
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, cols)
    return fig, axes

"""Points on the accuracy / size trade-off, and the Compression result that holds them.

A ``Point`` is one model with its measured figures (``deepdoctor.compress.measure``); the
Pareto front is the set of points no other point beats on both validation accuracy (or loss,
for regression) and connections at once. The chosen point is the one with the fewest
connections whose accuracy is within ``tolerance`` of the baseline's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..results import Result
from ..trace import json_ready
from .measure import LATENCY_HOW


@dataclass
class Point:
    """One model on the trade-off: how it was made and what it measures."""

    method: str  # baseline, prune, prune_structured, low_rank, quantize, distill, search
    setting: str  # what was done, in words: "90% of weights removed", "int8 weight-only"
    strength: float | None  # the swept knob in (0, 1); None where nothing is swept
    model: nn.Module
    connections: int
    parameters: int
    bytes: int
    latency_ms: float
    val_loss: float
    val_accuracy: float
    finetune_steps: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    pareto: bool = False

    def score(self, task: str) -> float:
        """Higher is better: accuracy where it applies, else minus the validation loss."""
        value = self.val_accuracy if task != "regression" else -self.val_loss
        return value if math.isfinite(value) else -math.inf

    def to_dict(self) -> dict[str, Any]:
        return json_ready(
            {
                "method": self.method,
                "setting": self.setting,
                "strength": self.strength,
                "connections": self.connections,
                "parameters": self.parameters,
                "bytes": self.bytes,
                "latency_ms": self.latency_ms,
                "val_loss": self.val_loss,
                "val_accuracy": self.val_accuracy,
                "finetune_steps": self.finetune_steps,
                "details": self.details,
                "note": self.note,
                "pareto": self.pareto,
            }
        )


@dataclass
class Skipped:
    """A method that could not run on this model, and why (in one sentence)."""

    method: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"method": self.method, "reason": self.reason}


def mark_pareto(points: list[Point], task: str) -> None:
    """Set ``pareto`` on the points that no other point dominates (better or equal on both
    score and connections, strictly better on one)."""
    for p in points:
        p.pareto = not any(
            q.score(task) >= p.score(task)
            and q.connections <= p.connections
            and (q.score(task) > p.score(task) or q.connections < p.connections)
            for q in points
        )


class Compression(Result):
    """What ``dd.compress`` measured: the trained baseline and every compressed point.

    ``baseline``: the trained, uncompressed model's point. ``points``: every compressed
    model, in the order made. ``skipped``: methods that could not run here, with the reason.
    ``chosen``: the point with the fewest connections within ``tolerance`` (a fraction:
    0.01 is one point of accuracy) of the baseline; the baseline when none is.
    """

    result_type = "compression"

    def __init__(
        self,
        experiment: dict[str, Any],
        task: str,
        baseline: Point,
        points: list[Point],
        skipped: list[Skipped],
        tolerance: float,
        search: dict[str, Any] | None = None,
    ) -> None:
        self.findings = []
        self.coverage = {}
        self.experiment, self.task = experiment, task
        self.baseline, self.points, self.skipped = baseline, points, skipped
        self.tolerance = tolerance
        self.search = search
        mark_pareto([baseline, *points], task)

    def include(self, search: Any) -> None:
        """Add a structure search's front, so one plot and one table show both; the Pareto
        marks are redrawn over the union."""
        self.search_points = list(search.points)
        self.search = search.to_dict()
        mark_pareto([*self.all_points, *self.search_points], self.task)
        self.search["points"] = [p.to_dict() for p in self.search_points]

    @property
    def all_points(self) -> list[Point]:
        return [self.baseline, *self.points]

    @property
    def chosen(self) -> Point:
        floor = self.baseline.score(self.task) - self.tolerance
        within = [p for p in self.all_points if p.score(self.task) >= floor]
        return min(within, key=lambda p: (p.connections, p.bytes, -p.score(self.task)))

    def method(self, name: str) -> list[Point]:
        """The points one method made."""
        return [p for p in self.points if p.method == name]

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        del out["findings"]  # a compression measures; it judges no health, so it has none
        chosen = self.chosen
        out.update(
            experiment=self.experiment,
            task=self.task,
            tolerance=self.tolerance,
            latency_how=LATENCY_HOW,
            baseline=self.baseline.to_dict(),
            points=[p.to_dict() for p in self.points],
            skipped=[s.to_dict() for s in self.skipped],
            chosen=None if chosen is self.baseline else self.points.index(chosen),
        )
        if self.search is not None:
            out["search"] = self.search
        return out

    def save(self, directory: str | Path) -> Path:
        """Write ``report.html``, ``compression.json``, the chosen model's state_dict
        (``chosen_model.pt``) and ``rebuild_chosen.py``, which rebuilds it; return the HTML
        path."""
        from .export import save_model

        directory = Path(directory)
        html = super().save(directory)
        save_model(self.chosen, directory)
        return html

    def __repr__(self) -> str:
        return (
            f"Compression({len(self.points)} points, {len(self.skipped)} skipped, chosen "
            f"{self.chosen.method}: {self.chosen.setting})"
        )

"""The compression section's figure and table: accuracy against connections, every point.

Drawn from a ``Compression.to_dict()`` (and its ``search`` entry when a structure search
ran): each method its own colour and marker, the Pareto front (no point beats it on both
accuracy and connections) as a line through its points, the chosen model ringed.
"""

from __future__ import annotations

import math
from typing import Any

from . import facts, plots

METHOD_STYLES = {
    "baseline": (plots.YELLOW, "*"),
    "prune": (plots.BLUE, "o"),
    "prune_structured": (plots.VERMILLION, "s"),
    "low_rank": (plots.GREEN, "^"),
    "quantize": (plots.PURPLE, "D"),
    "distill": (plots.ORANGE, "v"),
    "search": (plots.SKY, "P"),
}
COLUMNS = [
    "method",
    "setting",
    "connections",
    "of baseline",
    "parameters",
    "saved bytes",
    "latency ms / batch",
    "val accuracy",
    "val loss",
    "fine-tune steps",
    "Pareto",
    "note",
]


def all_points(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Baseline, compressed points, then the structure search's points."""
    search = (data.get("search") or {}).get("points") or []
    return [data["baseline"], *(data.get("points") or []), *search]


def _score(point: dict[str, Any], task: str) -> float:
    value = point.get("val_loss") if task == "regression" else point.get("val_accuracy")
    return math.nan if value is None else float(value)


def tradeoff_plot(data: dict[str, Any]) -> plots.Plot | None:
    if not data.get("baseline"):
        return None
    task = data.get("task", "classification")
    points = all_points(data)
    fig = plots._new_figure(10, 5.2)
    ax = fig.add_subplot()
    for method, (colour, marker) in METHOD_STYLES.items():
        mine = [p for p in points if p.get("method") == method]
        if mine:
            ax.scatter(
                [max(1, p["connections"]) for p in mine],
                [_score(p, task) for p in mine],
                c=colour,
                marker=marker,
                s=140 if method == "baseline" else 50,
                edgecolors="black",
                linewidths=0.5,
                label=method,
                zorder=3,
            )
    trials = (data.get("search") or {}).get("trials") or []
    if trials:
        ax.scatter(
            [max(1, t.get("connections") or 1) for t in trials],
            [_score(t, task) for t in trials],
            c=plots.SKY,
            marker=".",
            alpha=0.6,
            label="search trials",
            zorder=1,
        )
    front = sorted((p for p in points if p.get("pareto")), key=lambda p: p["connections"])
    if front:
        ax.step(
            [max(1, p["connections"]) for p in front],
            [_score(p, task) for p in front],
            where="post",
            color="black",
            linewidth=1,
            linestyle="--",
            label="Pareto front",
            zorder=2,
        )
    chosen = data.get("chosen")
    pick = data["baseline"] if chosen is None else data["points"][chosen]
    ax.scatter(
        [max(1, pick["connections"])],
        [_score(pick, task)],
        s=320,
        facecolors="none",
        edgecolors="black",
        linewidths=1.5,
        label="chosen",
        zorder=4,
    )
    ax.set_xscale("log")
    ax.set_xlabel("connections (nonzero weights, log scale)")
    ax.set_ylabel("validation loss" if task == "regression" else "validation accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    plots._title(ax, "Accuracy against connections")
    return plots.Plot(
        key="compression-tradeoff",
        title="Accuracy against connections",
        caption=(
            "Every compressed model, and the structure search's where one ran (its front as "
            "crosses, its other trials as dots). Up and to "
            "the left is better; the dashed line joins the Pareto front, the models no other "
            "beats on both accuracy and connections. The ring marks the chosen model."
        ),
        png_base64=plots._png(fig),
        alt="scatter of validation accuracy against connections, one marker per method",
    )


def point_rows(data: dict[str, Any]) -> list[list[Any]]:
    base = max(1, data["baseline"]["connections"])
    rows = []
    for p in all_points(data):
        rows.append(
            [
                p.get("method"),
                p.get("setting"),
                p.get("connections"),
                facts.percent(p["connections"] / base),
                p.get("parameters"),
                p.get("bytes"),
                p.get("latency_ms"),
                facts.percent(p.get("val_accuracy")),
                p.get("val_loss"),
                p.get("finetune_steps"),
                "yes" if p.get("pareto") else "",
                p.get("note", ""),
            ]
        )
    return rows

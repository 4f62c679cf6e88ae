"""The report's figures, drawn from the JSON-ready result dict (never from live objects).

Each function takes a piece of a result dict and returns a ``Plot`` (a PNG as base64 with
its title and a one-line caption saying what a healthy picture looks like), or ``None`` when
the dict lacks what the figure needs. Missing values (``None`` in the JSON, NaN in arrays)
draw as gaps and are marked: hatched cells in heatmaps, crosses under line plots.

Long runs are reduced before drawing, never truncated: a heatmap shows at most
``MAX_DRAW_STEPS`` columns and ``MAX_DRAW_LAYERS`` rows, each the mean of a block of steps
(and layers), and the plot says so. A 100,000-step, 1,000-layer trace draws in seconds into
a figure of ordinary size.
"""

from __future__ import annotations

import base64
import io
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: figures only ever go to PNG bytes

import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from ..wording import rounded  # noqa: E402

MAX_DRAW_STEPS = 600  # heatmap columns: about one per screen pixel at the page's width
MAX_DRAW_LAYERS = 200  # heatmap rows: more are not distinguishable at a readable height
MAX_LINE_POINTS = 1500  # per-step curves: more points than pixels only add bytes
MAX_BAR_LAYERS = 60  # beyond this many layers, per-layer bars become lines
MAX_NAMED_TICKS = 25  # up to this many layers, axes show layer names rather than indices
DPI = 100  # 1,000-pixel-wide figures: sharp on screen, about 50-150 kB each as PNG
LOG_RANGE = 100.0  # a loss curve spanning more than this factor is drawn on a log axis

# Okabe & Ito (2008): distinguishable under every common colour-vision deficiency.
BLUE, ORANGE, GREEN, VERMILLION, PURPLE, SKY, YELLOW = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#D55E00",
    "#CC79A7",
    "#56B4E9",
    "#F0E442",
)
GAP_HATCH = "xxx"
GAP_COLOUR = "0.55"
HEATMAP_GAP_NOTE = "hatched cells have no value (NaN, Inf or not recorded)"
HEATMAP_PARTIAL_NOTE = (
    "a red triangle above a column means some of its values were missing (NaN, Inf or not "
    "recorded); its cells show the mean of the rest"
)
HEATMAP_TITLE_PAD = 12.0  # points: room above a heatmap for the missing-value triangles
GAP_LABEL = "no value (NaN / Inf)"
LINE_GAP_NOTE = "red crosses along the bottom mark points with no value (NaN or Inf)"


@dataclass
class Plot:
    """One figure of the report: what it shows, what healthy looks like, the PNG."""

    key: str
    title: str
    caption: str
    png_base64: str
    alt: str
    notes: list[str] = field(default_factory=list)  # e.g. how the data was downsampled


# -- data helpers -----------------------------------------------------------------------------


def as_float_array(values: Any) -> np.ndarray:
    """A float array from JSON lists (``None`` becomes NaN) or an ndarray."""
    return np.asarray(values if values is not None else [], dtype=np.float64)


def _nanmean(block: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks are gaps, not errors
        return np.nanmean(block, axis=axis)


@dataclass
class Reduced:
    """A (rows, columns) grid of block means.

    ``missing``: blocks with no value at all (drawn as gaps); ``partial``: blocks where some
    but not all values were missing (drawn with the mean of the rest, and flagged).
    """

    values: np.ndarray
    missing: np.ndarray
    partial: np.ndarray
    steps_per_row: float
    layers_per_col: float
    first_step: int
    end_step: float  # the last recorded step plus one recording interval

    def column_width(self) -> float:
        """Optimizer steps covered by one row of ``values`` (one heatmap column)."""
        return (self.end_step - self.first_step) / max(len(self.values), 1)


def reduce_grid(
    rows: Any,
    steps: Sequence[int],
    n_cols: int,
    max_rows: int,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Reduced:
    """Block means over steps of a steps x layers table, read block by block.

    Reading a block at a time keeps memory small for long runs. Missing values (None, NaN,
    Inf) are left out of the means and counted, so a single non-finite step is never
    averaged away: its block is flagged as ``partial``.
    """
    n = len(rows)
    n_bins = min(n, max_rows)
    if n == n_bins:  # nothing to reduce: one conversion
        block = as_float_array(rows).reshape(n, n_cols)
        missing = ~np.isfinite(block)
        values = np.where(missing, np.nan, transform(block) if transform else block)
        partial = np.zeros_like(missing)
    else:
        edges = np.linspace(0, n, n_bins + 1).astype(int)
        values = np.empty((n_bins, n_cols))
        n_bad = np.zeros((n_bins, n_cols), dtype=np.int64)
        for b in range(n_bins):
            block = as_float_array(rows[edges[b] : edges[b + 1]]).reshape(-1, n_cols)
            bad = ~np.isfinite(block)
            if transform:
                block = transform(block)
            values[b] = _nanmean(np.where(bad, np.nan, block), axis=0)
            n_bad[b] = bad.sum(axis=0)
        sizes = np.diff(edges)[:, None]
        missing, partial = n_bad == sizes, (n_bad > 0) & (n_bad < sizes)
    first = int(steps[0]) if len(steps) else 0
    last = int(steps[-1]) if len(steps) else 0
    interval = (last - first) / (len(steps) - 1) if len(steps) > 1 else 1.0
    return Reduced(values, missing, partial, n / max(n_bins, 1), 1.0, first, last + interval)


def reduce_columns(red: Reduced, max_cols: int) -> Reduced:
    """Block means over neighbouring layers when there are more than ``max_cols``."""
    n_cols = red.values.shape[1]
    if n_cols <= max_cols:
        return red
    edges = np.linspace(0, n_cols, max_cols + 1).astype(int)
    pairs = list(zip(edges[:-1], edges[1:], strict=True))
    red.values = np.stack([_nanmean(red.values[:, a:b], axis=1) for a, b in pairs], axis=1)
    all_missing = np.stack([red.missing[:, a:b].all(axis=1) for a, b in pairs], axis=1)
    red.partial = (
        np.stack(
            [(red.missing[:, a:b] | red.partial[:, a:b]).any(axis=1) for a, b in pairs], axis=1
        )
        & ~all_missing
    )
    red.missing = all_missing
    red.layers_per_col = n_cols / max_cols
    return red


def reduce_line(
    x: np.ndarray, y: np.ndarray, max_points: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Block means of a long curve; a block holding a NaN stays NaN (a visible gap)."""
    n = len(y)
    if n <= max_points:
        return x, y, 1
    per = math.ceil(n / max_points)
    m = n // per * per
    xs = x[:m].reshape(-1, per).mean(axis=1)
    ys = y[:m].reshape(-1, per).mean(axis=1)  # plain mean: NaN anywhere -> NaN block
    if m < n:
        xs = np.append(xs, x[m:].mean())
        ys = np.append(ys, y[m:].mean())
    return xs, ys, per


def safe_text(text: Any) -> str:
    """A label matplotlib draws literally: ``$`` would otherwise start mathtext."""
    return str(text).replace("$", r"\$")


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _new_figure(width: float, height: float) -> Figure:
    # A bare Figure, not pyplot: no global state, nothing to close, safe in threads.
    return Figure(figsize=(width, height), layout="constrained")


def _log10(block: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(block)


def mark_gaps(ax: Axes, x: np.ndarray, y: np.ndarray, colour: str, label: str | None) -> bool:
    """Crosses along the bottom of ``ax`` where ``y`` has no value; True if any were drawn."""
    gaps = ~np.isfinite(y)
    if not gaps.any():
        return False
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    ax.plot(
        x[gaps],
        np.full(int(gaps.sum()), 0.03),
        linestyle="none",
        marker="x",
        color=colour,
        markersize=6,
        transform=trans,
        clip_on=False,
        label=label,
    )
    return True


def _layer_axis(ax: Axes, names: Sequence[str], axis: str, per: float = 1.0) -> None:
    """Name the layers when there are few, else number them (0 = nearest the input)."""
    n = len(names)
    if n <= MAX_NAMED_TICKS and per == 1.0:
        labels = [safe_text(_short(s)) for s in names]
        if axis == "y":
            ax.set_yticks(range(n), labels)
        else:
            ax.set_xticks(range(n), labels, rotation=60, ha="right")
    else:
        (ax.yaxis if axis == "y" else ax.xaxis).set_major_locator(
            MaxNLocator(integer=True, nbins=10)
        )


def _heatmap(
    fig: Figure,
    ax: Axes,
    red: Reduced,
    names: Sequence[str],
    cmap: str,
    vmin: float,
    vmax: float,
    colour_label: str,
) -> list[str]:
    """Draw a reduced steps x layers grid (layers down, input at the top).

    Returns the notes that explain the gap marks drawn (none when nothing was missing).
    """
    grid = np.ma.masked_array(red.values.T, mask=red.missing.T | ~np.isfinite(red.values.T))
    colormap = matplotlib.colormaps[cmap].with_extremes(bad=(0, 0, 0, 0))
    right = red.end_step
    extent = (red.first_step, right, len(names) - 0.5, -0.5)
    # Masked cells are transparent, so the hatched rectangle behind them shows through.
    ax.add_patch(
        Rectangle(
            (red.first_step, -0.5),
            right - red.first_step,
            len(names),
            facecolor="white",
            edgecolor=GAP_COLOUR,
            hatch=GAP_HATCH,
            linewidth=0,
            zorder=0,
        )
    )
    image = ax.imshow(
        grid,
        aspect="auto",
        cmap=colormap,
        vmin=vmin,
        vmax=vmax,
        extent=extent,
        interpolation="nearest",
        zorder=1,
    )
    cbar = fig.colorbar(image, ax=ax, pad=0.01)
    cbar.set_label(colour_label)
    ax.set_xlim(red.first_step, right)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlabel("optimizer step")
    _layer_axis(ax, names, "y", red.layers_per_col)
    handles: list[Any] = []
    notes = []
    if np.ma.is_masked(grid):
        notes.append(HEATMAP_GAP_NOTE)
        handles.append(
            Patch(
                facecolor="white",
                edgecolor=GAP_COLOUR,
                hatch=GAP_HATCH,
                label="no value (NaN, Inf or not recorded)",
            )
        )
    partial_rows = red.partial.any(axis=1)
    if partial_rows.any():
        # Blocks averaged over some missing values: flagged by a tick above the plot.
        notes.append(HEATMAP_PARTIAL_NOTE)
        x = red.first_step + (np.flatnonzero(partial_rows) + 0.5) * red.column_width()
        handles += ax.plot(
            x,
            np.full(x.size, 1.01),
            linestyle="none",
            marker="v",
            color=VERMILLION,
            markersize=4,
            clip_on=False,
            transform=blended_transform_factory(ax.transData, ax.transAxes),
            label="some values missing in this span (mean of the rest)",
        )
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.9)
    return notes


def _reduction_note(red: Reduced) -> str:
    parts = []
    if red.steps_per_row > 1:
        parts.append(f"{red.steps_per_row:.3g} recorded steps")
    if red.layers_per_col > 1:
        parts.append(f"{red.layers_per_col:.3g} layers")
    if not parts:
        return ""
    return "downsampled for drawing: each cell averages " + " x ".join(parts)


def _title(ax: Axes, title: str, note: str = "", pad: float = 6.0) -> None:
    ax.set_title(safe_text(title) + (f"\n{note}" if note else ""), fontsize=10, loc="left", pad=pad)


# -- gradient flow ------------------------------------------------------------------------------


def _table(trace: dict[str, Any], name: str) -> dict[str, Any] | None:
    table = trace.get("tables", {}).get(name)
    if not table or not table.get("steps"):
        return None
    return table


def gradient_heatmap(trace: dict[str, Any]) -> Plot | None:
    """Per-layer weight-gradient norm over steps, log colour scale."""
    table = _table(trace, "layers")
    names = list(trace.get("layers", []))
    if table is None or not names or "grad_norm_weight" not in table:
        return None
    red = reduce_grid(
        table["grad_norm_weight"], table["steps"], len(names), MAX_DRAW_STEPS, transform=_log10
    )
    red = reduce_columns(red, MAX_DRAW_LAYERS)
    finite = red.values[np.isfinite(red.values) & ~red.missing]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    fig = _new_figure(10, max(3.2, min(7.5, 1.8 + 0.14 * min(len(names), MAX_DRAW_LAYERS))))
    ax = fig.add_subplot()
    gap_notes = _heatmap(
        fig, ax, red, names, "viridis", vmin, vmax, "log10 gradient norm\n(L2, dimensionless)"
    )
    ax.set_ylabel("layer (input at top, output at bottom)")
    note = _reduction_note(red)
    _title(
        ax,
        "Weight-gradient L2 norm per layer over training (colour: log10)",
        note,
        pad=HEATMAP_TITLE_PAD,
    )
    return Plot(
        "gradient_heatmap",
        "Gradient flow: gradient norm per layer over steps",
        "Each row is one layer's weight-gradient norm over the run. Rows that darken towards "
        "the top (the input) are what vanishing_gradients finds, judged relative to the "
        "weights: the last quarter of weight layers' median over the first quarter's above "
        "1000x at initialisation or 100x over the run. exploding_gradients: the first "
        "quarter over 10x the last, a median gradient over 100x the weights' own size, or a "
        "step whose total gradient norm jumps to 100x its median over the 20 steps before "
        "(a bright column).",
        _png(fig),
        "heatmap of log10 gradient norm, layers by optimizer steps",
        ([note] if note else []) + gap_notes,
    )


def bar_heights(values: np.ndarray, floor: float) -> np.ndarray:
    """Heights for bars on a log axis.

    A zero (a layer that does not learn at all) shows as a stub at ``floor``; a missing
    value (NaN) draws no bar at all, and is crossed below the axis instead.
    """
    return np.where(np.isfinite(values) & (values <= 0), floor, values)


def learning_speed(speed: dict[str, Any] | None) -> Plot | None:
    """Nielsen's figure: per-layer learning speed (bias-gradient norm) at start and end, as
    the Diagnosis stored it (its ``learning_speed``: the page and the terminal read the same
    numbers, never recomputing them from the trace)."""
    if not speed or not speed.get("start"):
        return None
    names = list(speed.get("layers") or [])
    start, end = as_float_array(speed["start"]), as_float_array(speed["end"])
    if len(names) != len(start):
        return None
    (a, b), (c, d), window = speed["start_steps"], speed["end_steps"], speed["window"]
    x = np.arange(len(names))
    fig = _new_figure(10, 3.8)
    ax = fig.add_subplot()
    start_label = f"start (steps {a}-{b})"
    end_label = f"end (steps {c}-{d})"
    positive = np.concatenate([start, end])
    positive = positive[np.isfinite(positive) & (positive > 0)]
    floor = float(positive.min()) / 2 if positive.size else 1e-12

    if len(names) <= MAX_BAR_LAYERS:
        ax.bar(x - 0.2, bar_heights(start, floor), width=0.4, color=BLUE, label=start_label)
        ax.bar(x + 0.2, bar_heights(end, floor), width=0.4, color=ORANGE, label=end_label)
    else:
        ax.plot(x, start, color=BLUE, label=start_label, linewidth=1)
        ax.plot(x, end, color=ORANGE, label=end_label, linewidth=1, linestyle="--")
    if positive.size:
        ax.set_yscale("log")
    offset = 0.2 if len(names) <= MAX_BAR_LAYERS else 0.0  # under the bar that is missing
    gaps = mark_gaps(ax, x - offset, start, VERMILLION, "no value at start")
    gaps |= mark_gaps(ax, x + offset, end, VERMILLION, "no value at end")
    ax.set_xlabel("layer (input on the left, output on the right)")
    ax.set_ylabel("speed of learning:\nbias-gradient L2 norm (log)")
    _layer_axis(ax, names, "x")
    ax.legend(fontsize=8, loc="best")
    note = f"mean over the first and last {window} recorded steps"
    _title(ax, "Learning speed per layer at the start and the end", note)
    return Plot(
        "learning_speed",
        "Gradient flow: learning speed per layer",
        "How fast each layer's parameters can move (Nielsen's speed of learning). Healthy: "
        "no steady fall towards the input. The vanishing_gradients finding judges the same "
        "profile taken relative to the weights: the median of the last quarter of weight "
        "layers over the first quarter's, above 1000x at initialisation or 100x over the "
        "run.",
        _png(fig),
        "bar chart of per-layer bias-gradient norm at start and end of training",
        [LINE_GAP_NOTE] if gaps else [],
    )


# -- activation health -----------------------------------------------------------------------


def activation_health(trace: dict[str, Any]) -> Plot | None:
    """Per-layer dead and saturated fractions over steps (only layers where each applies)."""
    table = _table(trace, "acts")
    names = list(trace.get("act_layers", []))
    if table is None or not names:
        return None
    panels = []
    for stat, label in (("dead_frac", "dead units"), ("saturated_frac", "saturated units")):
        if stat not in table:
            continue
        red = reduce_grid(table[stat], table["steps"], len(names), MAX_DRAW_STEPS)
        applies = ~np.all(red.missing, axis=0)  # e.g. dead_frac is NaN for a sigmoid
        if not applies.any():
            continue
        red.values, red.missing = red.values[:, applies] * 100, red.missing[:, applies]
        shown = [n for n, keep in zip(names, applies, strict=True) if keep]
        red = reduce_columns(red, MAX_DRAW_LAYERS)
        kinds = trace.get("act_kinds", {})
        kind_list = sorted({str(kinds.get(n, "?")) for n in shown})
        panels.append((label, red, shown, kind_list))
    if not panels:
        return None
    height = sum(max(2.4, min(5.0, 1.4 + 0.12 * min(len(p[2]), MAX_DRAW_LAYERS))) for p in panels)
    fig = _new_figure(10, height + 0.4)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    notes: list[str] = []
    for ax, (label, red, shown, kind_list) in zip(axes, panels, strict=True):
        gap_notes = _heatmap(
            fig, ax, red, shown, "cividis", 0.0, 100.0, f"% of units {label.split()[0]}"
        )
        notes += [f"{label}: {n}" for n in gap_notes]
        ax.set_ylabel("activation module\n(input at top)")
        note = _reduction_note(red)
        _title(
            ax,
            f"{label.capitalize()} per layer ({', '.join(kind_list)} modules)",
            note,
            pad=HEATMAP_TITLE_PAD,
        )
        if note:
            notes.append(f"{label}: {note}")
    return Plot(
        "activation_health",
        "Activation health: dead and saturated units over steps",
        "Bright rows are units stuck at zero (dead: silent for a whole batch) or in their "
        "flat tails (saturated: within 1% of the bounds). saturated_units warns when over "
        "half a layer's outputs are saturated in the first 3 samples, or at the end of a "
        "run whose loss fell by less than 20%; dead_units warns when over half a layer's "
        "units are dead over the run's second half (a note from a quarter).",
        _png(fig),
        "heatmaps of percent dead and saturated units per activation module by step",
        notes,
    )


# -- curves -------------------------------------------------------------------------------------


LOSS_LINES = (("train_loss", BLUE, "train loss"), ("val_loss", ORANGE, "validation loss"))
ACCURACY_LINES = (
    ("train_accuracy", BLUE, "train accuracy"),
    ("val_accuracy", ORANGE, "validation accuracy"),
)
ACCURACY_LINES_KEYS = tuple(key for key, _, _ in ACCURACY_LINES)
LOSS_UNITS = {
    "classification": "cross-entropy, nats",
    "binary": "binary cross-entropy, nats",
    "regression": "mean squared error, target units²",
}


def _evals(history: dict[str, Any], key: str) -> tuple[np.ndarray, np.ndarray]:
    evals = [e for e in history.get("evals", []) if key in e]
    x = as_float_array([e.get("step") for e in evals])
    y = as_float_array([e.get(key) for e in evals])
    return x, y


def _eval_lines(
    ax: Axes,
    history: dict[str, Any],
    metrics: Sequence[tuple[str, str, str]],
    style: str,
    prefix: str,
    scale: float = 1.0,
) -> tuple[list[np.ndarray], bool]:
    """Plot evaluation metrics (key, colour, label) of one run; return the values drawn and
    whether any gap was marked."""
    drawn, marked = [], False
    for key, colour, label in metrics:
        x, y = _evals(history, key)
        if not x.size:
            continue
        ax.plot(
            x,
            scale * y,
            color=colour,
            linestyle=style,
            marker="o",
            markersize=3,
            label=f"{prefix}{label}",
        )
        drawn.append(y)
        marked |= mark_gaps(ax, x, y, VERMILLION, None)
    return drawn, marked


def _run_legend(ax: Axes) -> None:
    """A legend in two parts for an untreated / treated overlay: colour names the metric,
    the line style names the run (dashed untreated, solid treated), each drawn once."""
    metrics: dict[str, Any] = {}
    for line in ax.get_lines():
        label = str(line.get_label())
        if label.startswith("_"):
            continue
        metric = label.split(": ", 1)[-1]
        # The treated run's line, drawn last, gives the metric its colour (the untreated
        # per-batch loss is grey); the key shows it solid, the run keys say the dashes.
        markers_only = line.get_linestyle() in ("None", "none", "")
        metrics[metric] = Line2D(
            [],
            [],
            color=line.get_color(),
            marker=line.get_marker(),
            markersize=6 if markers_only else 3,
            linestyle="none" if markers_only else "-",
        )
    runs = [
        Line2D([], [], color="0.2", linestyle="--", label="untreated run (dashed)"),
        Line2D([], [], color="0.2", linestyle="-", label="treated run (solid)"),
    ]
    for name, handle in metrics.items():
        handle.set_label(name)
    ax.legend(handles=[*runs, *metrics.values()], fontsize=7, loc="best", handlelength=3.0)


def training_curves(
    history: dict[str, Any] | None,
    before: dict[str, Any] | None = None,
    stopped: dict[str, Any] | None = None,
) -> Plot | None:
    """Loss and accuracy, train and validation; ``before`` overlays an untreated run."""
    runs = [
        (h, tag) for h, tag in ((before, "untreated"), (history, "treated" if before else "")) if h
    ]
    if not runs or not any(h.get("loss") or h.get("evals") for h, _ in runs):
        return None
    task = next((h.get("task") for h, _ in runs if h.get("task")), "classification")
    show_acc = task != "regression" and any(
        np.isfinite(_evals(h, k)[1]).any() for h, _ in runs for k in ACCURACY_LINES_KEYS
    )
    fig = _new_figure(10, 3.8)
    axes = fig.subplots(1, 2 if show_acc else 1, squeeze=False, sharex=True)[0]
    loss_ax = axes[0]
    notes: list[str] = []
    marked = [False] * len(axes)  # per panel: were any gaps crossed?
    all_loss: list[np.ndarray] = []
    for h, tag in runs:
        style = "--" if tag == "untreated" else "-"
        prefix = f"{tag}: " if tag else ""
        loss = as_float_array(h.get("loss"))
        if loss.size:
            xs, ys, per = reduce_line(
                np.arange(1, loss.size + 1, dtype=float), loss, MAX_LINE_POINTS
            )
            if per > 1:
                notes.append(f"per-step loss: mean of {per} steps per point")
            loss_ax.plot(
                xs,
                ys,
                color=SKY if tag != "untreated" else "0.6",
                linewidth=0.8,
                linestyle=style,
                alpha=0.8,
                label=f"{prefix}train loss per batch",
            )
            all_loss.append(ys)
            marked[0] |= mark_gaps(loss_ax, xs, ys, VERMILLION, None)
        drawn, gaps = _eval_lines(loss_ax, h, LOSS_LINES, style, prefix)
        all_loss += drawn
        marked[0] |= gaps
        if show_acc:
            marked[1] |= _eval_lines(axes[1], h, ACCURACY_LINES, style, prefix, scale=100.0)[1]
    values = np.concatenate(all_loss) if all_loss else np.zeros(0)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size and values.max() / values.min() > LOG_RANGE:
        loss_ax.set_yscale("log")
    if stopped and stopped.get("reason") not in (None, "completed") and stopped.get("step"):
        loss_ax.axvline(
            stopped["step"],
            color=VERMILLION,
            linestyle=":",
            label=f"stopped: {safe_text(stopped['reason'])}",
        )
    loss_ax.set_xlim(left=0)
    loss_ax.set_ylabel(f"loss ({LOSS_UNITS.get(str(task), 'loss units')})")
    _title(loss_ax, "Loss", "; ".join(dict.fromkeys(notes)))
    if show_acc:
        axes[1].set_ylim(0, 100)
        axes[1].set_ylabel("accuracy (%)")
        _title(axes[1], "Accuracy")
    for ax, crossed in zip(axes, marked, strict=True):
        if crossed:  # one legend entry explains the crosses
            ax.plot([], [], linestyle="none", marker="x", color=VERMILLION, label=GAP_LABEL)
        ax.set_xlabel("optimizer step")
        if before:
            _run_legend(ax)
        else:
            ax.legend(fontsize=7, loc="best")
    caption = (
        "Healthy: the loss falls steadily and flattens, validation close to training; "
        "a rising validation loss while training loss falls means overfitting, a flat "
        "line means stalled training."
    )
    if before:
        caption = (
            "Dashed: the untreated run; solid: the treated run, same seed and budget. " + caption
        )
    return Plot(
        "curves",
        "Training curves",
        caption,
        _png(fig),
        "line plots of loss and accuracy over optimizer steps",
        list(dict.fromkeys(notes + ([LINE_GAP_NOTE] if any(marked) else []))),
    )


# -- checkup ------------------------------------------------------------------------------------


def trainable_edge(layers: list[dict[str, Any]], trainable: Any) -> float | None:
    """Where the region beyond the trainable depth ends, in row positions: the trainable
    depth counts weight layers from the output (norm and activation rows are not counted;
    a file without ``weight_layer`` counts every row). None when the net is within it."""
    if not isinstance(trainable, int | float) or not math.isfinite(trainable):
        return None
    weight_rows = [i for i, layer in enumerate(layers) if layer.get("weight_layer", True)]
    beyond = len(weight_rows) - math.floor(trainable)
    if beyond <= 0:
        return None
    # Up to the first weight layer within the trainable depth (the rows between go with it).
    return weight_rows[beyond] - 0.5 if beyond < len(weight_rows) else len(layers) - 0.5


def depth_profile(layers: list[dict[str, Any]], depth: dict[str, Any] | None) -> Plot | None:
    """Activation scale and gradient scale through depth at initialisation."""
    if not layers:
        return None
    names = [str(layer.get("name", i)) for i, layer in enumerate(layers)]
    x = np.arange(len(layers))
    out_std = as_float_array([layer.get("out_std") for layer in layers])
    grad = as_float_array([layer.get("grad_norm") for layer in layers])
    fig = _new_figure(10, 3.8)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    panels = (
        (
            axes[0],
            out_std,
            BLUE,
            "output std (activation scale,\nunits of the input)",
            "Activation scale through depth",
        ),
        (
            axes[1],
            grad,
            ORANGE,
            "weight-gradient L2 norm\n(dimensionless, log)",
            "Gradient scale through depth",
        ),
    )
    trainable = (depth or {}).get("trainable_depth")
    edge = trainable_edge(layers, trainable)
    edge_depth = float(trainable) if edge is not None and trainable is not None else 0.0
    gaps = False
    for ax, y, colour, ylabel, title in panels:
        ax.plot(x, y, color=colour, marker="o", markersize=3, label=ylabel.split("(")[0].strip())
        if np.any(np.isfinite(y) & (y > 0)):
            ax.set_yscale("log")
        gaps |= mark_gaps(ax, x, y, VERMILLION, GAP_LABEL)
        if edge is not None:
            ax.axvline(
                edge,
                color=GREEN,
                linestyle="--",
                label=f"trainable depth: about {rounded(edge_depth)} weight layers",
            )
            ax.axvspan(-0.5, edge, color="0.85", zorder=0, label="weight layers beyond it")
        ax.set_xlabel("layer (input on the left, output on the right)")
        ax.set_ylabel(ylabel)
        _layer_axis(ax, names, "x")
        ax.legend(fontsize=7, loc="best")
        _title(ax, title)
    return Plot(
        "depth_profile",
        "Checkup: activation and gradient scale through depth",
        "Per parameter layer at initialisation. The trainable depth is fit to the weight "
        "layers' gradient norms (right): the number of weight layers over which the fitted "
        "rate per layer changes the norm a million-fold. Shaded: the weight layers beyond "
        "it, counted from the output, which will barely learn; no shading when the network "
        "is within it.",
        _png(fig),
        "line plots of activation std and gradient norm by layer at initialisation",
        [LINE_GAP_NOTE] if gaps else [],
    )

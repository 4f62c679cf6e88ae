"""`deepdoctor demo`: a deep sigmoid MLP on digits, watched by the Probe.

It shows the first thing deepdoctor measures: the per-layer learning speed (the norm of each
layer's bias gradient, Nielsen ch. 5). In a deep sigmoid net it falls by orders of magnitude
from the output back to the input, so the early layers barely learn.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from ..presets import get_preset
from ..probe import Probe


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="train a broken deep sigmoid MLP on digits under the Probe")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _speed_bar(value: float, lo: float, hi: float, width: int = 24) -> str:
    if not math.isfinite(value) or value <= 0:
        return ""
    frac = (math.log10(value) - lo) / max(hi - lo, 1e-12)
    return "#" * max(1, round(frac * width))


def run(args: argparse.Namespace) -> int:
    console = Console()
    exp = get_preset("sigmoid-mlp50-digits").replace(seed=args.seed)
    if args.steps is not None:
        exp = exp.replace(steps=args.steps)
    console.print(f"[bold]deepdoctor demo[/]: {exp.description}")
    model = exp.build()
    with Probe(model) as probe:
        history = exp.run(model, probe=probe, progress="training")
    speed = probe.trace.learning_speed()
    start, end = speed[0], speed[-1]
    finite = np.concatenate([start, end])
    finite = finite[np.isfinite(finite) & (finite > 0)]
    lo, hi = (math.log10(finite.min()), math.log10(finite.max())) if finite.size else (0, 1)
    table = Table(title="learning speed per layer (bias-gradient norm), input at the top")
    table.add_column("layer")
    table.add_column("at start", justify="right")
    table.add_column("at end", justify="right")
    table.add_column("log scale (end)")
    for name, s0, s1 in zip(probe.trace.layers, start, end, strict=True):
        table.add_row(name, f"{s0:.2e}", f"{s1:.2e}", _speed_bar(s1, lo, hi))
    console.print(table)
    final = history.final
    console.print(
        f"after {history.steps} steps: train loss {final.get('train_loss', math.nan):.3f}, "
        f"validation accuracy {100 * final.get('val_accuracy', math.nan):.1f}% "
        f"(chance is 10%); {_speed_comparison(end[0], end[-1])}"
    )
    return 0


def _speed_comparison(first: float, last: float) -> str:
    """How the first layer's learning speed compares with the last's, in words."""
    if not (math.isfinite(first) and math.isfinite(last)) or last <= 0:
        return "the learning speeds are not finite, so they cannot be compared."
    if first == 0:
        return (
            "the first layer's gradient underflowed to exactly 0: it does not learn at "
            "all, while the last layer's is "
            f"{last:.1e}."
        )
    return f"the first layer learns {first / last:.1e} times as fast as the last."

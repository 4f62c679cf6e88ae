"""`deepdoctor compress TARGET`: train TARGET, compress it by each method, measure the cost."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..compress import METHODS, Compression, compress
from ..compress.compress import DEFAULT_TIMING
from ..compress.measure import LATENCY_HOW
from ..report.facts import headline, percent
from ..targets import load_target


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--strengths takes numbers in (0, 1) separated by commas, e.g. 0.5,0.9; got {text!r}"
        ) from None


def register(sub: Any) -> None:
    p = sub.add_parser(
        "compress", help="prune, quantise, factorise and distil TARGET; measure each result"
    )
    p.add_argument(
        "target",
        metavar="TARGET",
        help="preset:NAME (see `deepdoctor presets`) or path/to/file.py:function",
    )
    p.add_argument(
        "--methods",
        type=_names,
        default=METHODS,
        help=f"comma-separated, from {','.join(METHODS)} (default: all)",
    )
    p.add_argument(
        "--strengths",
        type=_fractions,
        default=None,
        help="comma-separated fractions in (0, 1) swept by every method that sweeps "
        "(default: each method's own sweep)",
    )
    p.add_argument("--steps", type=int, default=None, help="training steps (default: TARGET's)")
    p.add_argument(
        "--finetune-steps",
        type=int,
        default=None,
        help="steps of each fine-tune (default: a quarter of the training steps)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="accuracy the chosen model may give up, as a fraction (default 0.01: one point)",
    )
    p.add_argument(
        "--timing",
        type=float,
        default=DEFAULT_TIMING,
        help=f"seconds of timed forward passes per latency measurement (default {DEFAULT_TIMING})",
    )
    p.add_argument("--seed", type=int, default=None, help="seed (default: TARGET's)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("deepdoctor-out/compress"),
        metavar="DIR",
        help="directory for report.html, compression.json, the chosen model's state_dict and "
        "rebuild_chosen.py (default deepdoctor-out/compress)",
    )
    p.add_argument(
        "--json", type=Path, default=None, metavar="FILE", help="also write the JSON here"
    )
    p.set_defaults(func=run)


def points_table(result: Compression) -> Table:
    table = Table(title="compressed models", caption=f"latency: {LATENCY_HOW}")
    columns = ("method", "setting", "connections", "bytes", "ms / batch", "val accuracy", "")
    for col in columns:
        table.add_column(col, justify="left" if col in ("method", "setting", "") else "right")
    base = max(1, result.baseline.connections)
    for p in result.all_points:
        mark = "chosen" if p is result.chosen else ("Pareto" if p.pareto else "")
        table.add_row(
            p.method,
            p.setting,
            f"{p.connections:,} ({percent(p.connections / base)})",
            f"{p.bytes:,}",
            f"{p.latency_ms:.3g}",
            percent(p.val_accuracy),
            mark,
        )
    return table


def run(args: argparse.Namespace) -> int:
    console = Console()
    exp = load_target(args.target)
    if args.steps is not None:
        exp = exp.replace(steps=args.steps)
    if args.seed is not None:
        exp = exp.replace(seed=args.seed)
    result = compress(
        exp,
        methods=args.methods,
        strengths=args.strengths,
        finetune_steps=args.finetune_steps,
        tolerance=args.tolerance,
        timing=args.timing,
        progress=True,
    )
    data = result.to_dict()
    console.print(f"[bold]compress[/] {exp.name}: {headline(data)}", highlight=False)
    console.print(points_table(result))
    for s in result.skipped:
        console.print(f"[yellow]skipped {s.method}[/]: {s.reason}", highlight=False)
    notes = {p.note for p in result.points if p.note}
    for note in sorted(notes):
        console.print(f"[dim]note: {note}[/]", highlight=False)
    console.print(f"wrote {result.save(args.out)}", highlight=False)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=1, allow_nan=False))
        console.print(f"wrote {args.json}", highlight=False)
    return 0

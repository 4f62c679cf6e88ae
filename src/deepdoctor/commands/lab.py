"""`deepdoctor lab list` and `deepdoctor lab NAME`: reproduce the classic trainability results."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from ..lab import LABS, get_lab, run_lab
from ..lab.report import VERDICT_COLOURS


def register(sub: Any) -> None:
    p = sub.add_parser(
        "lab",
        help="run experiments that reproduce the classic results on trainability",
        description="`deepdoctor lab list` names the experiments; `deepdoctor lab NAME` runs "
        "one (resuming from OUT/NAME.csv if it was interrupted) and writes "
        "report.html, results.json and the CSV into OUT.",
    )
    p.add_argument("experiment", metavar="NAME", help="an experiment name, or 'list'")
    p.add_argument(
        "--quick", action="store_true", help="the seconds-long variant (tiny nets, few steps)"
    )
    p.add_argument(
        "--out",
        default=None,
        help="output directory (default lab-results/NAME or lab-results/NAME-quick)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--data-root",
        default=None,
        help="directory with local MNIST IDX files (layer-speed also runs on MNIST)",
    )
    p.set_defaults(func=run)


def run_list(console: Console) -> int:
    table = Table(title="deepdoctor lab experiments (deepdoctor lab NAME [--quick])")
    table.add_column("name", style="bold")
    table.add_column("what it reproduces")
    table.add_column("source")
    for lab in LABS.values():
        table.add_row(lab.name, lab.title, lab.source)
    console.print(table)
    return 0


def run(args: argparse.Namespace) -> int:
    console = Console()
    if args.experiment == "list":
        return run_list(console)
    lab = get_lab(args.experiment)
    result = run_lab(lab, quick=args.quick, out=args.out, seed=args.seed, data_root=args.data_root)
    colour = VERDICT_COLOURS[result.conclusion.verdict]
    console.print(
        f"[bold]{lab.title}[/] ({result.settings.variant}, {len(result.rows)} "
        f"configurations, {result.resumed} resumed, {result.seconds:.0f} s): "
        f"[bold {colour}]{result.conclusion.verdict}[/]"
    )
    console.print(result.conclusion.summary, highlight=False)
    console.print(f"report: {result.report}\nraw results: {result.csv}")
    return 0

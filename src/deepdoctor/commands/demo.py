"""`deepdoctor demo`: the whole tool on one broken network, in about a minute.

The patient is a 50-layer sigmoid MLP with torch's default initialisation on the digits
(preset ``sigmoid-mlp50-digits``): it stays at chance. The demo walks the four steps a user
takes with their own model:

1. checkup: one forward/backward pass at initialisation predicts the trouble;
2. diagnose: a short training run under the Probe shows it layer by layer (the per-layer
   learning speed, Nielsen ch. 5, falls by orders of magnitude towards the input);
3. treat: remedies applied to fresh copies, trained from the same seed, kept when verified;
4. report: the HTML pages and JSON files for all three.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from ..checkup import checkup_experiment
from ..diagnose import diagnose_experiment
from ..presets import get_preset
from ..report.facts import speed_comparison
from ..report.terminal import print_before_after, print_findings, print_trials
from ..treat import DEFAULT_BUDGET, treat
from .diagnose import headline
from .treat import save_outputs

DEMO_PRESET = "sigmoid-mlp50-digits"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="checkup, diagnose, treat and report a broken 50-layer sigmoid MLP on digits",
    )
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET,
        help="treat's compute, in runs of the untreated experiment (default 3)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("deepdoctor-out/demo"),
        help="directory for the reports (default deepdoctor-out/demo)",
    )
    p.add_argument(
        "--no-treat", action="store_true", help="stop after diagnose (checkup and diagnose only)"
    )
    p.set_defaults(func=run)


def _speed_bar(value: float, lo: float, hi: float, width: int = 24) -> str:
    if not math.isfinite(value) or value <= 0:
        return ""
    frac = (math.log10(value) - lo) / max(hi - lo, 1e-12)
    return "#" * max(1, round(frac * width))


def learning_speed_table(speed: dict[str, Any], rows: int = 12) -> Table:
    """Learning speed per layer at the start and the end of the run, input at the top: the
    figures the Diagnosis stores (``Trace.learning_speed_at_ends``), which the page draws.

    A deep net has too many layers for a screen, so at most ``rows`` evenly spaced layers
    are shown (always the first and the last).
    """
    layers = speed["layers"]
    start = np.array(speed["start"], dtype=float)
    end = np.array(speed["end"], dtype=float)
    both = np.concatenate([start, end])
    both = both[np.isfinite(both) & (both > 0)]
    lo, hi = (math.log10(both.min()), math.log10(both.max())) if both.size else (0.0, 1.0)
    n = len(layers)
    shown = sorted(set(np.linspace(0, n - 1, min(rows, n)).round().astype(int).tolist()))
    (a, b), (c, d) = speed["start_steps"], speed["end_steps"]
    table = Table(
        title="learning speed per layer (bias-gradient norm)",
        caption=f"{len(shown)} of {n} layers shown, input at the top; "
        f"means over steps {a}-{b} and {c}-{d}",
    )
    for col, justify in (("layer", "left"), ("at start", "right"), ("at end", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    table.add_column("log scale (end)")
    for i in shown:
        table.add_row(layers[i], _sci(start[i]), _sci(end[i]), _speed_bar(end[i], lo, hi))
    return table


def _sci(value: float) -> str:
    return f"{value:.2e}" if math.isfinite(value) else "not finite"


def run(args: argparse.Namespace) -> int:
    console = Console()
    exp = get_preset(DEMO_PRESET).replace(seed=args.seed)
    if args.steps is not None:
        exp = exp.replace(steps=args.steps)
    console.print(f"[bold]deepdoctor demo[/]: {exp.description}", highlight=False)
    out: Path = args.out

    console.rule("1. checkup at initialisation (one forward and backward pass)")
    chk = checkup_experiment(exp)
    print_findings([f.to_dict() for f in chk.findings], console, title="predicted at init")
    console.print(chk.depth_summary(), highlight=False)

    console.rule(f"2. diagnose ({exp.steps} steps under the Probe)")
    diag = diagnose_experiment(exp, progress="diagnosing")
    speed = diag.trace.learning_speed_at_ends()  # what diagnosis.json stores and the page draws
    console.print(learning_speed_table(speed))
    console.print(
        f"{headline(diag)} (chance is 10%); {speed_comparison(speed['end'][0], speed['end'][-1])}.",
        highlight=False,
    )
    print_findings([f.to_dict() for f in diag.findings], console, title="found in training")

    written = [chk.save(out / "checkup"), diag.save(out / "diagnosis")]
    if not args.no_treat:
        console.rule(f"3. treat (budget {args.budget:g} runs of the untreated experiment)")
        tr = treat(exp, budget=args.budget, progress=True)
        console.print(f"{tr.message}", highlight=False)
        data = tr.to_dict()
        print_trials(data["trials"], console, metric=(data.get("scoring") or {}).get("metric"))
        print_before_after(data, console)
        console.print(f"compute: {tr.compute:.2f} x one untreated run", highlight=False)
        written += save_outputs(tr, out / "treatment")

    console.rule("4. report")
    for path in written:
        console.print(f"wrote {path}", highlight=False)
    return 0

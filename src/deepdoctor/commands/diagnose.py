"""`deepdoctor diagnose TARGET`: a short watched training run, and what went wrong in it.

Exit code 0 when the run is healthy, 1 when there is a warning or critical finding, 2 for a
usage error, so the command can gate a CI job the way a linter does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from ..diagnose import Diagnosis, diagnose_experiment
from ..report.terminal import print_findings
from ..targets import load_target


def register(sub: Any) -> None:
    p = sub.add_parser(
        "diagnose", help="train TARGET briefly under the Probe and name its problems"
    )
    p.add_argument(
        "target",
        metavar="TARGET",
        help="preset:NAME (see `deepdoctor presets`) or path/to/file.py:function",
    )
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: TARGET's)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: TARGET's)")
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the Diagnosis as JSON to FILE",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="write report.html and diagnosis.json into DIR",
    )
    p.set_defaults(func=run)


def headline(diag: Diagnosis) -> str:
    final = diag.history.final
    parts = [f"{diag.history.steps} steps"]
    for key, label in (("train_loss", "train loss"), ("val_loss", "validation loss")):
        if key in final:
            parts.append(f"{label} {final[key]:.3g}")
    if "val_accuracy" in final and final["val_accuracy"] == final["val_accuracy"]:
        parts.append(f"validation accuracy {100 * final['val_accuracy']:.1f}%")
    if diag.stopped_at is not None:
        parts.append(f"stopped at step {diag.stopped_at} ({diag.stop_reason})")
    return ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    console = Console()
    exp = load_target(args.target)
    diag = diagnose_experiment(exp, steps=args.steps, seed=args.seed, progress="diagnosing")
    console.print(f"[bold]diagnose[/] {exp.name}: {headline(diag)}", highlight=False)
    data = diag.to_dict()
    print_findings(data["findings"], console)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=1, allow_nan=False))
        console.print(f"wrote {args.json}")
    if args.out is not None:
        console.print(f"wrote {diag.save(args.out)}")
    return 0 if diag.healthy else 1

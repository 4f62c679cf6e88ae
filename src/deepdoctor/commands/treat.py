"""`deepdoctor treat TARGET`: diagnose, try the named remedies, keep what is verified."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from ..report.terminal import print_before_after, print_findings, print_trials
from ..targets import load_target
from ..treat import DEFAULT_BUDGET, Treatment, treat


def register(sub: Any) -> None:
    p = sub.add_parser("treat", help="apply remedies to fresh copies and keep the verified ones")
    p.add_argument("target", help="preset:NAME or path/to/file.py:function")
    p.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET,
        help="compute to spend, in runs of the untreated experiment (default 3)",
    )
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per full run")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("deepdoctor-out/treat"),
        help="directory for report.html, treatment.json, the treated model's "
        "state_dict and the snippet of changes (default deepdoctor-out/treat)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the Treatment JSON here")
    p.add_argument(
        "--workers", type=int, default=None, help="run trials in N local worker processes"
    )
    p.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="run trials on the Ray cluster at ADDRESS (host:port, ray://host:10001, auto)",
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="directory of finished trials, so that a treat stopped by Ctrl-C and run again "
        "does not rerun them (default OUT/trials)",
    )
    p.add_argument("--no-cache", action="store_true", help="keep no trial cache")
    p.set_defaults(func=run)


def save_outputs(tr: Treatment, out: Path) -> list[Path]:
    """The files Treatment.save writes: the same, from the same code."""
    return tr.write_files(out)


def run(args: argparse.Namespace) -> int:
    console = Console()
    exp = load_target(args.target)
    if args.steps is not None:
        exp = exp.replace(steps=args.steps)
    cache = None if args.no_cache else (args.cache or args.out / "trials")
    tr = treat(
        exp,
        budget=args.budget,
        seed=args.seed,
        progress=True,
        workers=args.workers,
        ray=args.ray,
        cache=cache,
    )
    console.print(f"[bold]treat[/] {exp.name}: {tr.message}", highlight=False)
    data = tr.to_dict()
    print_trials(data["trials"], console, metric=(data.get("scoring") or {}).get("metric"))
    print_before_after(data, console)
    console.print(f"compute: {tr.compute:.2f} x one untreated run")
    print_findings([f.to_dict() for f in tr.findings], console, title="findings after treatment")
    for path in save_outputs(tr, args.out):
        console.print(f"wrote {path}", highlight=False)
    if args.json:
        args.json.write_text(json.dumps(tr.to_dict(), indent=1))
    return 0 if tr.healthy else 1

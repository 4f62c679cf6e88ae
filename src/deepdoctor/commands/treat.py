"""`deepdoctor treat TARGET`: diagnose, try the named remedies, keep what is verified."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
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
    p.set_defaults(func=run)


def save_outputs(tr: Treatment, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    model_path = out / "treated_model.pt"
    torch.save(tr.model.state_dict(), model_path)
    snippet = out / "changes.py"
    snippet.write_text(tr.snippet())
    written += [model_path, snippet]
    try:
        written.append(tr.save(out))
    except ImportError:  # the HTML report is optional for the JSON and model outputs
        (out / "treatment.json").write_text(json.dumps(tr.to_dict(), indent=1))
        written.append(out / "treatment.json")
    return written


def run(args: argparse.Namespace) -> int:
    console = Console()
    exp = load_target(args.target)
    if args.steps is not None:
        exp = exp.replace(steps=args.steps)
    tr = treat(exp, budget=args.budget, seed=args.seed, progress=True)
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

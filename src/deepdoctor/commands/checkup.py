"""`deepdoctor checkup TARGET`: trainability at initialisation, from one forward/backward pass."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from ..checkup import checkup_experiment
from ..report.terminal import print_findings
from ..targets import load_target


def register(sub: Any) -> None:
    p = sub.add_parser(
        "checkup",
        help="check a model's trainability at initialisation "
        "(one forward/backward pass, no training)",
    )
    p.add_argument("target", help="preset:NAME or path/to/file.py:function")
    p.add_argument("--json", type=Path, default=None, help="write the Checkup JSON here")
    p.add_argument(
        "--out", type=Path, default=None, help="directory for report.html and checkup.json"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed for the model's weights and the batch (default: the target's)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    console = Console()
    if args.seed is not None and args.seed < 0:
        raise ValueError(f"--seed must be a whole number >= 0, got {args.seed}")
    exp = load_target(args.target)
    chk = checkup_experiment(exp, seed=args.seed)
    comp = chk.complexity
    console.print(
        f"[bold]checkup[/] {exp.name}: {len(chk.layers)} layers, {comp.params:,} parameters, "
        f"{comp.flops:,.0f} FLOPs per example, batch of {chk.meta['batch_size']}",
        highlight=False,
    )
    print_findings([f.to_dict() for f in chk.findings], console, title="findings at init")
    console.print(chk.depth_summary(), highlight=False)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(chk.to_dict(), indent=1, allow_nan=False))
        console.print(f"wrote {args.json}", highlight=False)
    if args.out:
        console.print(f"wrote {chk.save(args.out)}", highlight=False)
    return 0 if chk.healthy else 1

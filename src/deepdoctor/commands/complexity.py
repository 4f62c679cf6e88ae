"""`deepdoctor complexity TARGET`: parameters, connections, FLOPs and memory per layer."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..complexity import Complexity, measure
from ..report.terminal import print_findings
from ..targets import load_target
from ..training import batches, is_loader


def register(sub: Any) -> None:
    p = sub.add_parser(
        "complexity", help="parameters, connections, FLOPs and activation memory per layer"
    )
    p.add_argument("target", help="preset:NAME or path/to/file.py:function")
    p.add_argument("--json", type=Path, default=None, help="write the table as JSON here")
    p.set_defaults(func=run)


def _num(value: float | int | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def complexity_table(c: Complexity, title: str = "complexity per example") -> Table:
    table = Table(title=title)
    table.add_column("layer")
    table.add_column("type")
    for col in ("params", "connections", "reuse", "FLOPs"):
        table.add_column(col, justify="right")
    for layer in c.layers:
        table.add_row(
            layer.name,
            layer.type,
            _num(layer.params),
            _num(layer.connections),
            _num(layer.reuse),
            _num(layer.flops),
        )
    table.add_section()
    table.add_row("total", "", _num(c.params), _num(c.connections), "", _num(c.flops), style="bold")
    return table


def run(args: argparse.Namespace) -> int:
    console = Console()
    exp = load_target(args.target)
    model = exp.build()
    X, _ = next(batches(exp.train, exp.batch_size, exp.seed))
    n_samples = None if is_loader(exp.train) else len(exp.train[0])
    c = measure(model, X[:2], n_samples=n_samples)
    console.print(complexity_table(c, title=f"{exp.name}: complexity per example"))
    memory = f"activation memory: {c.activation_bytes / 1024:,.1f} KiB per example"
    per_sample = (
        f"; {c.params_per_sample:,.1f} parameters per training sample"
        if c.params_per_sample is not None
        else ""
    )
    console.print(memory + per_sample, highlight=False)
    if c.findings:
        print_findings([f.to_dict() for f in c.findings], console)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(c.to_dict(), indent=1, allow_nan=False))
        console.print(f"wrote {args.json}", highlight=False)
    return 0

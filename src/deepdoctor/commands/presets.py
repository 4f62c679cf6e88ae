"""`deepdoctor presets`: the built-in setups, broken and healthy, that TARGET can name."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from ..presets import PRESETS


def register(sub: Any) -> None:
    p = sub.add_parser("presets", help="list the built-in setups (TARGET preset:NAME)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    table = Table(title="presets (deepdoctor diagnose preset:NAME)")
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("expected findings")
    for p in sorted(PRESETS.values(), key=lambda p: (bool(p.expected), p.name)):
        table.add_row(p.name, p.description, ", ".join(p.expected) or "healthy")
    Console().print(table)
    return 0

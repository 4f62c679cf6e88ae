"""`deepdoctor presets`: the built-in setups, broken and healthy, that TARGET can name.

A name is printed whole so it can be copied into ``preset:NAME``: on a screen narrower than
the findings' ``NARROW_WIDTH`` (110 columns; a pipe gets 80) one preset per line with its
description and expected findings wrapped below it; wider, a table whose name column is as
wide as the longest name.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..presets import PRESETS
from ..report.terminal import NARROW_WIDTH, wrap_words

TITLE = "presets (deepdoctor diagnose preset:NAME)"


def register(sub: Any) -> None:
    p = sub.add_parser("presets", help="list the built-in setups (TARGET preset:NAME)")
    p.set_defaults(func=run)


def print_presets(console: Console) -> None:
    presets = sorted(PRESETS.values(), key=lambda p: (bool(p.expected), p.name))
    if console.width < NARROW_WIDTH:
        console.print(f"[bold]{TITLE}[/]", highlight=False)
        for p in presets:
            expected = "expected: " + (", ".join(p.expected) or "healthy")
            below = [
                line
                for text in (p.description, expected)
                for line in wrap_words(text, console.width - 2)
            ]
            block = [f"[bold]{escape(p.name)}[/]"] + ["  " + escape(line) for line in below]
            console.print("\n".join(block), highlight=False, soft_wrap=True)
        return
    table = Table(title=TITLE)
    table.add_column("name", style="bold", no_wrap=True, min_width=max(map(len, PRESETS)))
    table.add_column("description")
    table.add_column("expected findings")
    for p in presets:
        table.add_row(p.name, p.description, ", ".join(p.expected) or "healthy")
    console.print(table)


def run(args: argparse.Namespace) -> int:
    print_presets(Console())
    return 0

"""`deepdoctor data list`: the data sets deepdoctor can load."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from .. import data


def register(sub: Any) -> None:
    p = sub.add_parser("data", help="list the data sets deepdoctor can load")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    lp = dsub.add_parser("list", help="list embedded data sets and local-file loaders")
    lp.set_defaults(func=run_list)


def run_list(args: argparse.Namespace) -> int:
    table = Table(title="data sets (deepdoctor.data.load(NAME))")
    table.add_column("name", style="bold")
    table.add_column("source")
    table.add_column("description")
    for info in data.available():
        table.add_row(
            info.name, "local files (root=DIR)" if info.needs_root else "embedded", info.description
        )
    Console().print(table)
    return 0

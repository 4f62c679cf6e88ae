"""`deepdoctor report RESULT.json`: re-render the HTML page and the summary from a saved result.

The page is drawn from the JSON alone, so a result saved on one machine (or by an older run)
renders anywhere, offline.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from ..report import load_result, print_summary, render_html


def register(sub: Any) -> None:
    p = sub.add_parser("report", help="re-render report.html from a saved result JSON file")
    p.add_argument(
        "result",
        type=Path,
        help="a diagnosis.json, checkup.json or treatment.json written by save(dir)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory for report.html (default: the JSON file's directory)",
    )
    p.add_argument("--quiet", action="store_true", help="do not print the summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    data = load_result(args.result)
    out_dir = args.out if args.out is not None else args.result.parent
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a directory for report.html")
    try:
        page = render_html(data)
    except (KeyError, AttributeError, TypeError, IndexError) as exc:
        raise ValueError(
            f"{args.result} does not have the layout of a {data['schema']} result "
            f"({type(exc).__name__}: {exc}); check it against docs/json-schema.md"
        ) from exc
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    console = Console()
    if not args.quiet:
        print_summary(data, console)
    console.print(f"wrote {path}", highlight=False)
    return 0

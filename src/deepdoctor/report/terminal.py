"""The terminal summary: a findings table coloured by severity that reads the same uncoloured.

Severity is spelled out in words (never colour alone), so the table survives NO_COLOR, pipes
and logs.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
MAX_LAYERS_SHOWN = 3


def _layers(layers: list[str]) -> str:
    if len(layers) <= MAX_LAYERS_SHOWN:
        return ", ".join(layers)
    return ", ".join(layers[:MAX_LAYERS_SHOWN]) + f" (+{len(layers) - MAX_LAYERS_SHOWN} more)"


def _evidence(evidence: dict[str, Any], limit: int = 3) -> str:
    parts = []
    for key, value in evidence.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.3g}")
        elif isinstance(value, int | str | bool) or value is None:
            parts.append(f"{key}={value}")
        if len(parts) == limit:
            break
    return ", ".join(parts)


def findings_table(findings: list[dict[str, Any]], title: str = "findings") -> Table:
    """A rich table of finding dicts (``Finding.to_dict()``), most severe first."""
    table = Table(title=title, show_lines=False)
    table.add_column("severity")
    table.add_column("kind", style="bold")
    table.add_column("layers")
    table.add_column("evidence")
    table.add_column("remedies")
    for f in findings:
        style = SEVERITY_STYLE.get(f["severity"], "")
        table.add_row(
            f"[{style}]{f['severity']}[/]" if style else f["severity"],
            f["kind"],
            _layers(f.get("layers", [])),
            _evidence(f.get("evidence", {})),
            ", ".join(f.get("remedies", [])[:3]),
        )
    return table


def print_findings(findings: list[dict[str, Any]], console: Console | None = None,
                   title: str = "findings") -> None:
    console = console or Console()
    if not findings:
        console.print("[green]healthy[/]: no findings")
        return
    console.print(findings_table(findings, title))
    for f in findings:
        console.print(f"- [bold]{f['kind']}[/] ({f['severity']}): {f['summary']}", highlight=False)

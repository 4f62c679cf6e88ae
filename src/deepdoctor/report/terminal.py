"""The terminal summary: a findings table coloured by severity that reads the same uncoloured.

Severity is spelled out in words (never colour alone), so the table survives NO_COLOR, pipes
and logs. ``print_summary`` prints any result dict: the headline, the findings, and the few
numbers worth reading first (the same ones the HTML page leads with), and one line on what
the run gave the detectors to read (its ``coverage``). A result on which nothing at all could
be judged says so in place of "healthy". Text from the data is escaped, so a layer named
``[red]x`` prints as written.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import facts

SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
MAX_LAYERS_SHOWN = 3  # the table cell stays one or two lines; the HTML page lists them all
MAX_EVIDENCE_SHOWN = 3


def _layers(layers: list[str]) -> str:
    if len(layers) <= MAX_LAYERS_SHOWN:
        return ", ".join(layers)
    return ", ".join(layers[:MAX_LAYERS_SHOWN]) + f" (+{len(layers) - MAX_LAYERS_SHOWN} more)"


def _evidence(evidence: dict[str, Any], limit: int = MAX_EVIDENCE_SHOWN) -> str:
    parts = []
    for key, value in evidence.items():
        if isinstance(value, float):
            parts.append(f"{key}: {value:.3g}")
        elif isinstance(value, int | str | bool) or value is None:
            parts.append(f"{key}: {value}")
        if len(parts) == limit:
            break
    return "\n".join(parts)  # one per line: long names wrap whole instead of being cut


def _severity(severity: str) -> str:
    style = SEVERITY_STYLE.get(severity)
    return f"[{style}]{escape(severity)}[/]" if style else escape(severity)


def findings_table(findings: list[dict[str, Any]], title: str = "findings") -> Table:
    """A rich table of finding dicts (``Finding.to_dict()``), most severe first."""
    table = Table(title=title, show_lines=False)
    table.add_column("severity", no_wrap=True)
    table.add_column("kind", style="bold", no_wrap=True)
    table.add_column("layers")
    table.add_column("evidence", overflow="fold")
    table.add_column("remedies", overflow="fold")
    for f in findings:
        table.add_row(
            _severity(f["severity"]),
            escape(f["kind"]),
            escape(_layers(list(f.get("layers", [])))),
            escape(_evidence(f.get("evidence", {}))),
            escape(", ".join(f.get("remedies", [])[:3])),
        )
    return table


def print_findings(
    findings: list[dict[str, Any]], console: Console | None = None, title: str = "findings"
) -> None:
    """The findings table, then each finding's one-sentence summary."""
    console = console or Console()
    if not findings:
        console.print(f"{escape(title)}: [green]none[/]", highlight=False)
        return
    console.print(findings_table(findings, title))
    for f in findings:
        console.print(
            f"- [bold]{escape(f['kind'])}[/] ({_severity(f['severity'])}): {escape(f['summary'])}",
            highlight=False,
        )


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def coverage_line(coverage: dict[str, Any]) -> str:
    """One line: what was measured; what could not be judged (``cannot_judge``'s ``what``)."""
    acts = coverage.get("activations") or {}
    steps = coverage.get("steps", 0)
    samples = _count(coverage.get("activation_samples", 0), "sample")
    seen = [
        _count(steps, "step"),
        f"{_count(coverage.get('layers', 0), 'layer')} ({coverage.get('weight_layers', 0)} weight)",
        " ".join(f"{kind} {n}" for kind, n in sorted(acts.items())) + f" in {samples}"
        if acts
        else "no activations",
        f"loss {coverage.get('finite_loss_steps', 0)}/{steps} finite"
        if coverage.get("loss_recorded")
        else "no loss",
        _count(coverage.get("evaluations", 0), "eval"),
    ]
    unjudged = [e["what"] for e in coverage.get("cannot_judge") or []]
    judged = "; not judged: " + ", ".join(unjudged) if unjudged else ""
    return "coverage: " + ", ".join(seen) + judged


def print_summary(data: dict[str, Any], console: Console | None = None) -> None:
    """Print a result dict (``to_dict()`` of a Checkup, Diagnosis or Treatment) for a person."""
    console = console or Console()
    healthy = not facts.problems(data)
    coverage = data.get("coverage") or {}
    nothing = coverage.get("nothing_judged") if healthy else None
    style = "bold yellow" if nothing else "bold green" if healthy else "bold red"
    headline = (
        "nothing could be judged: " + escape("; ".join(nothing))
        if nothing
        else facts.headline(data)
    )
    console.print(f"[bold]{escape(facts.title(data))}[/]: [{style}]{headline}[/]", highlight=False)
    if "findings_before" in data:
        print_findings(
            data.get("findings_before") or [], console, title="findings before treatment"
        )
        print_findings(data.get("findings") or [], console, title="findings after treatment")
    else:
        print_findings(data.get("findings") or [], console)
    numbers = facts.key_numbers(data)
    width = max((len(label) for label, _ in numbers), default=0)
    for label, value in numbers:
        console.print(f"[dim]{escape(label.ljust(width))}[/]  {escape(value)}", highlight=False)
    if coverage:
        console.print(f"[dim]{escape(coverage_line(coverage))}[/]", highlight=False)

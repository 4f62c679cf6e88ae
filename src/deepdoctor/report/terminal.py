"""The terminal summary: a findings table coloured by severity that reads the same uncoloured.

Severity is spelled out in words (never colour alone), so the table survives NO_COLOR, pipes
and logs. ``print_summary`` prints any result dict: the headline, the findings, and the few
numbers worth reading first (the same ones the HTML page leads with), and one line on what
the run gave the detectors to read (its ``coverage``). A result on which nothing at all could
be judged says so in place of "healthy". Text from the data is escaped, so a layer named
``[red]x`` prints as written.

Identifiers (kinds, remedies, layer and evidence names) are never cut or broken, so they can
be copied: below ``NARROW_WIDTH`` columns (an 80-column terminal, or a pipe, which rich gives
80) each finding prints as a block of labelled lines instead of a table.
"""

from __future__ import annotations

import io
import textwrap
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..wording import readable
from . import facts

SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
MAX_LAYERS_SHOWN = 3  # the table cell stays one or two lines; the HTML page lists them all
MAX_EVIDENCE_SHOWN = 3
# The table's columns need their longest identifiers whole: severity 10, kind 21
# ("exploding_gradients"), evidence 30 ("first_to_last_ratio: 3.2e-05"), remedies 23
# ("leaky_relu_activation"), layers 16, borders 6: 106. Below this the table would break
# them mid-word, so findings print as blocks; wider, they still do when some identifier
# (a long layer name) would not fit its column whole.
NARROW_WIDTH = 110


def _layers(layers: list[str]) -> str:
    if len(layers) <= MAX_LAYERS_SHOWN:
        return ", ".join(layers)
    return ", ".join(layers[:MAX_LAYERS_SHOWN]) + f" (+{len(layers) - MAX_LAYERS_SHOWN} more)"


def _evidence_shown(evidence: dict[str, Any], limit: int = MAX_EVIDENCE_SHOWN) -> list[str]:
    """``key: value`` for the first ``limit`` scalar entries (lists and tables are the page's)."""
    parts = []
    for key, value in evidence.items():
        if isinstance(value, float):
            parts.append(f"{key}: {value:.3g}")
        elif isinstance(value, int | str | bool) or value is None:
            parts.append(f"{key}: {value}")
        if len(parts) == limit:
            break
    return parts


def _evidence(evidence: dict[str, Any]) -> str:
    return "\n".join(_evidence_shown(evidence))  # one a line: long names wrap whole


def _severity(severity: str) -> str:
    style = SEVERITY_STYLE.get(severity)
    return f"[{style}]{escape(severity)}[/]" if style else escape(severity)


def findings_table(findings: list[dict[str, Any]], title: str = "findings") -> Table:
    """A rich table of finding dicts (``Finding.to_dict()``), most severe first."""
    table = Table(title=title, show_lines=False)
    table.add_column("severity", no_wrap=True)
    table.add_column("kind", style="bold", no_wrap=True)
    table.add_column("layers")
    table.add_column("evidence")
    table.add_column("remedies")
    for f in findings:
        table.add_row(
            _severity(f["severity"]),
            escape(f["kind"]),
            escape(_layers(list(f.get("layers", [])))),
            escape(_evidence(f.get("evidence", {}))),
            escape("\n".join(f.get("remedies", [])[:3])),  # one a line: each wraps whole
        )
    return table


def _keeps_names_whole(table: Table, findings: list[dict[str, Any]], width: int) -> bool:
    """Whether rich lays ``table`` out at ``width`` with every identifier whole: it shrinks
    the widest columns below their longest word rather than fail, so the layout is checked."""
    probe = Console(file=io.StringIO(), width=width, no_color=True, force_terminal=False)
    with probe.capture() as capture:
        probe.print(table)
    words = {word.strip(",:") for word in capture.get().split()}
    return all(
        name in words
        for f in findings
        for name in (
            f["kind"],
            *f.get("remedies", [])[:3],
            *f.get("layers", [])[:MAX_LAYERS_SHOWN],
            *(part.split(": ")[0] for part in _evidence_shown(f.get("evidence", {}))),
        )
    )


def wrap_words(text: str, width: int) -> list[str]:
    """Lines of at most ``width`` broken at spaces only: a word longer than the line
    overflows it whole rather than being cut."""
    return textwrap.wrap(text, max(width, 1), break_long_words=False, break_on_hyphens=False)


def finding_block(f: dict[str, Any], width: int) -> str:
    """One finding for a narrow screen, as markup: the kind, then severity, layers, evidence
    and remedies on labelled lines, then the summary wrapped at word boundaries."""
    indent, label_width = "  ", len("evidence")
    hang = indent + " " * (label_width + 2)
    lines = [f"[bold]{escape(f['kind'])}[/]"]
    lines.append(f"{indent}[dim]{'severity':<{label_width}}[/]  {_severity(f['severity'])}")
    for label, values in (
        ("layers", [_layers(list(f.get("layers", [])))]),
        ("evidence", _evidence_shown(f.get("evidence", {}))),
        ("remedies", [", ".join(f.get("remedies", [])[:3])]),
    ):
        wrapped = [line for value in values for line in wrap_words(value, width - len(hang))]
        for i, line in enumerate(wrapped):
            head = f"{indent}[dim]{label:<{label_width}}[/]  " if i == 0 else hang
            lines.append(head + escape(line))
    summary = readable(str(f.get("summary", "")))
    lines += [indent + escape(line) for line in wrap_words(summary, width - len(indent))]
    return "\n".join(lines)


def print_findings(
    findings: list[dict[str, Any]], console: Console | None = None, title: str = "findings"
) -> None:
    """The findings table, then each finding's one-sentence summary; on a screen narrower
    than ``NARROW_WIDTH``, or too narrow for the table's longest words, one block each."""
    console = console or Console()
    if not findings:
        console.print(f"{escape(title)}: [green]none[/]", highlight=False)
        return
    table = findings_table(findings, title)
    if console.width < NARROW_WIDTH or not _keeps_names_whole(table, findings, console.width):
        console.print(f"[bold]{escape(title)}[/]", highlight=False)
        for f in findings:
            console.print(finding_block(f, console.width), highlight=False, soft_wrap=True)
            console.print()
        return
    console.print(table)
    for f in findings:
        summary = escape(readable(f["summary"]))
        console.print(
            f"- [bold]{escape(f['kind'])}[/] ({_severity(f['severity'])}): {summary}",
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

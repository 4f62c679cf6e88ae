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


def finding_block(
    f: dict[str, Any], width: int, note: str | None = None, indent: str = "  "
) -> str:
    """One finding for a narrow screen, as markup: the kind, then severity, cause, layers,
    evidence and remedies on labelled lines, then the summary (and a reconciling ``note``)
    wrapped at word boundaries. A consequence is printed with a deeper ``indent``."""
    label_width = len("evidence")
    hang = indent + " " * (label_width + 2)
    lines = [f"{indent[:-2]}[bold]{escape(f['kind'])}[/]"]
    lines.append(f"{indent}[dim]{'severity':<{label_width}}[/]  {_severity(f['severity'])}")
    for label, values in (
        ("cause", [f"a consequence of {f['caused_by']}"] if f.get("caused_by") else []),
        ("layers", [_layers(list(f.get("layers", [])))] if f.get("layers") else []),
        ("evidence", _evidence_shown(f.get("evidence", {}))),
        ("remedies", [", ".join(f.get("remedies", [])[:3])] if f.get("remedies") else []),
    ):
        wrapped = [line for value in values for line in wrap_words(value, width - len(hang))]
        for i, line in enumerate(wrapped):
            head = f"{indent}[dim]{label:<{label_width}}[/]  " if i == 0 else hang
            lines.append(head + escape(line))
    summary = readable(str(f.get("summary", "")))
    lines += [indent + escape(line) for line in wrap_words(summary, width - len(indent))]
    if note:
        lines += [indent + escape(line) for line in wrap_words(note, width - len(indent))]
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
    groups = facts.grouped_findings(findings)
    notes = facts.finding_notes(findings)
    ordered = [f for root, consequences in groups for f in (root, *consequences)]
    table = findings_table(ordered, title)
    if console.width < NARROW_WIDTH or not _keeps_names_whole(table, ordered, console.width):
        console.print(f"[bold]{escape(title)}[/]", highlight=False)
        for root, consequences in groups:
            block = finding_block(root, console.width, notes.get(root["kind"]))
            console.print(block, highlight=False, soft_wrap=True)
            for c in consequences:  # under its root, indented
                block = finding_block(c, console.width, indent="    ")
                console.print(block, highlight=False, soft_wrap=True)
            console.print()
        return
    console.print(table)
    for f in ordered:
        summary = escape(readable(f["summary"]))
        cause = f", a consequence of {escape(f['caused_by'])}" if f.get("caused_by") else ""
        note = f" {escape(notes[f['kind']])}" if f["kind"] in notes else ""
        console.print(
            f"- [bold]{escape(f['kind'])}[/] ({_severity(f['severity'])}{cause}): {summary}{note}",
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
        # What treat tried, in the words and numbers the page's trials table has.
        print_trials(
            data.get("trials") or [], console, metric=(data.get("scoring") or {}).get("metric")
        )
    else:
        print_findings(data.get("findings") or [], console)
    numbers = facts.key_numbers(data)
    width = max((len(label) for label, _ in numbers), default=0)
    for label, value in numbers:
        console.print(f"[dim]{escape(label.ljust(width))}[/]  {escape(value)}", highlight=False)
    if coverage:
        console.print(f"[dim]{escape(coverage_line(coverage))}[/]", highlight=False)


# -- treat's trials and its before / after --------------------------------------------------


def trial_lines(
    trials: list[dict[str, Any]], metric: str | None = None
) -> list[tuple[str, str, str]]:
    """(remedies, stage and steps, what happened with its own numbers) for each trial dict,
    in the words the page uses (``facts.trial_outcome``)."""
    rows = []
    for t in trials:
        n = t.get("steps")
        steps = f", {n:,} step{'' if n == 1 else 's'}" if n else ""
        rows.append(
            (
                "+".join(t.get("remedies", [])),
                facts.trial_stage(t) + steps,
                facts.trial_outcome(t, trials, metric)[1],
            )
        )
    return rows


def print_trials(
    trials: list[dict[str, Any]],
    console: Console | None = None,
    title: str = "trials (same seed and data order as the untreated run)",
    metric: str | None = None,
) -> None:
    """Every trial of a treatment: a table on a wide screen; below ``NARROW_WIDTH`` one block
    a trial, so remedy names are never cut."""
    console = console or Console()
    rows = trial_lines(trials, metric)
    if not rows:
        return
    if console.width >= NARROW_WIDTH:
        table = Table(title=title)
        table.add_column("remedies", no_wrap=True)
        table.add_column("stage", no_wrap=True)
        table.add_column("result")
        for remedies, stage, result in rows:
            table.add_row(escape(remedies), escape(stage), escape(result))
        console.print(table)
        return
    console.print(f"[bold]{escape(title)}[/]", highlight=False)
    for remedies, stage, result in rows:
        lines = [f"[bold]{escape(remedies)}[/]", f"  [dim]stage[/]   {escape(stage)}"]
        wrapped = wrap_words(result, console.width - 10)
        lines += [
            ("  [dim]result[/]  " if i == 0 else " " * 10) + escape(line)
            for i, line in enumerate(wrapped)
        ]
        console.print("\n".join(lines), highlight=False, soft_wrap=True)
        console.print()


def before_after_lines(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, untreated, treated) of a treatment dict, formatted as on the page."""
    before, after = data.get("before") or {}, data.get("after") or {}
    rows = []
    for key, label in (
        ("train_loss", "training loss"),
        ("val_loss", "validation loss"),
        ("train_accuracy", "training accuracy"),
        ("val_accuracy", "validation accuracy"),
        ("val_balanced_accuracy", "validation balanced accuracy"),
    ):
        if key in before or key in after:
            fmt = facts.percent if key.endswith("accuracy") else facts.number
            b, a = before.get(key), after.get(key)
            rows.append((label, facts.metric_value(b, fmt), facts.metric_value(a, fmt)))
    return rows


def print_before_after(data: dict[str, Any], console: Console | None = None) -> None:
    """The untreated and treated run's final metrics side by side (as the page has them)."""
    console = console or Console()
    table = Table(title="before / after (same seed and steps)")
    table.add_column("metric", no_wrap=True)
    table.add_column("untreated", justify="right")
    table.add_column("treated", justify="right")
    for label, b, a in before_after_lines(data):
        table.add_row(label, b, a)
    console.print(table)

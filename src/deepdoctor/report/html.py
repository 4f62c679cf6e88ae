"""The report page: one self-contained HTML file rendered from a result dict.

Figures are embedded PNGs, styles are inline, there is no script, and a Content Security
Policy forbids every fetch, so the page opens offline and nothing in the data can run: every
string taken from the data goes through ``esc``. Each section is drawn only when the dict
holds the key it shows.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import Any

from ..wording import readable
from . import compression, facts, plots

MAX_LAYERS_LISTED = 12  # a finding naming more layers lists these and counts the rest
MAX_LIST_ITEMS = 8  # evidence lists longer than this show their head and a count
MAX_TABLE_ROWS = 2000  # per-layer tables stop here (a 1,000-layer net still fits whole)

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

# Severity is always written as a word; colour only repeats it (WCAG: never colour alone).
SEVERITY_COLOURS = {"critical": "#b2182b", "warning": "#a15c00", "info": "#0072b2"}

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;
  background:#f6f6f4;margin:0}
main{max-width:1080px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:1.6em;margin:0 0 4px}h2{margin:36px 0 8px;padding-top:8px;
  border-top:2px solid #e4e4e0}h3{margin:18px 0 6px;font-size:1.05em}
.sub{color:#555;margin:0 0 14px}
.headline{display:inline-block;font-weight:700;padding:4px 12px;border-radius:4px;
  color:#fff;margin:6px 0 10px}
.healthy{background:#1a7f37}.unhealthy{background:#b2182b}
dl.numbers{display:grid;grid-template-columns:max-content 1fr;gap:2px 18px;margin:8px 0}
dl.numbers dt{color:#555}dl.numbers dd{margin:0;font-weight:600}
nav{margin:10px 0;font-size:.92em}nav a{margin-right:14px;color:#0b5cad}
.finding{border:1px solid #ddd;border-left:6px solid var(--sev);border-radius:4px;
  padding:10px 14px;margin:12px 0}
.badge{display:inline-block;font-size:.8em;font-weight:700;text-transform:uppercase;
  letter-spacing:.04em;color:#fff;background:var(--sev);padding:1px 8px;border-radius:3px;
  margin-right:8px}
.kind{font-family:ui-monospace,Menlo,Consolas,monospace;font-weight:600}
.finding p{margin:6px 0}.muted{color:#666;font-size:.9em}
.note{background:#f2f2ef;padding:4px 8px;border-radius:3px}
.consequences{margin:8px 0 2px 12px}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}
th,td{border-bottom:1px solid #e4e4e0;padding:3px 10px;text-align:left;vertical-align:top}
th{background:#f2f2ef}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.total td{font-weight:700;border-top:2px solid #bbb}
ul.remedies{margin:4px 0;padding-left:20px}
.verified{color:#1a7f37;font-weight:600}.failed{color:#b2182b}
figure{margin:14px 0}figure img{width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.92em;color:#333;margin-top:4px}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.92em}
pre{background:#f4f4f2;padding:8px 10px;overflow-x:auto}
footer{margin-top:40px;color:#777;font-size:.85em}
"""


def esc(value: Any) -> str:
    """Text from the data, made inert: every ``<``, ``>``, ``&`` and quote escaped."""
    return html.escape(str(value), quote=True)


NUMBER_TEXT = re.compile(r"^[+-]?[\d.,]+(e[+-]?\d+)?(%| points)?$|^n/a$")


def _cell(value: Any) -> str:
    """A table cell; numbers, and text that reads as one (``91.0%``), align right."""
    text = facts.number(value) if isinstance(value, int | float) else value
    text = "" if text is None else str(text)
    cls = ' class="num"' if NUMBER_TEXT.match(text) else ""
    return f"<td{cls}>{esc(text)}</td>"


def table(
    headers: list[str],
    rows: list[list[Any]],
    total: list[Any] | None = None,
    limit: int = MAX_TABLE_ROWS,
) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows[:limit])
    if len(rows) > limit:
        body += (
            f'<tr><td colspan="{len(headers)}" class="muted">{len(rows) - limit:,} more '
            "rows in the JSON file</td></tr>"
        )
    if total:
        body += '<tr class="total">' + "".join(_cell(v) for v in total) + "</tr>"
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(plot: plots.Plot | None) -> str:
    if plot is None:
        return ""
    return (
        f'<figure id="fig-{esc(plot.key)}"><img alt="{esc(plot.alt)}" '
        f'src="data:image/png;base64,{plot.png_base64}">'
        f"<figcaption>{esc(plot.caption)}"
        + "".join(
            f'<br><span class="muted">{esc(n[:1].upper() + n[1:])}.</span>' for n in plot.notes
        )
        + "</figcaption></figure>"
    )


# -- findings ---------------------------------------------------------------------------------


def _evidence_value(value: Any) -> str:
    if isinstance(value, list):
        shown = ", ".join(_evidence_value(v) for v in value[:MAX_LIST_ITEMS])
        more = f" (+{len(value) - MAX_LIST_ITEMS} more)" if len(value) > MAX_LIST_ITEMS else ""
        return f"[{shown}{more}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_evidence_value(v)}" for k, v in value.items()) + "}"
    return facts.number(value)


def _layers(layers: list[str]) -> str:
    shown = ", ".join(f"<code>{esc(name)}</code>" for name in layers[:MAX_LAYERS_LISTED])
    if len(layers) > MAX_LAYERS_LISTED:
        shown += f" and {len(layers) - MAX_LAYERS_LISTED} more"
    return shown


OUTCOME_CLASSES = {"kept": "verified", "error": "failed"}


def remedy_outcomes(
    remedies: list[str], trials: list[dict[str, Any]], metric: str | None = None
) -> dict[str, tuple[str, str]]:
    """For each remedy of a finding that treat tried: (css class, what its own trial found,
    with that trial's numbers and stage), from ``facts.remedy_note``."""
    out: dict[str, tuple[str, str]] = {}
    for name in remedies:
        note = facts.remedy_note(name, trials, metric)
        if note is not None:
            out[name] = (OUTCOME_CLASSES.get(note[0], ""), note[1])
    return out


def finding_card(
    f: dict[str, Any],
    trials: list[dict[str, Any]] | None = None,
    note: str | None = None,
    consequences: list[dict[str, Any]] | None = None,
    metric: str | None = None,
) -> str:
    """One finding: severity, kind, summary, layers, evidence, remedies (with what treat
    found for each, when ``trials`` are given), a reconciling ``note``, and the findings it
    explains (``caused_by``) nested under it."""
    severity = str(f.get("severity", "info"))
    colour = SEVERITY_COLOURS.get(severity, "#555")
    parts = [
        f'<article class="finding" style="--sev:{colour}">',
        f'<p><span class="badge">{esc(severity)}</span><span class="kind">'
        f"{esc(f.get('kind', ''))}</span></p>",
        f"<p>{esc(readable(str(f.get('summary', ''))))}</p>",
    ]
    if note:
        parts.append(f'<p class="note">{esc(note)}</p>')
    if f.get("layers"):
        parts.append(f'<p class="muted">layers: {_layers(list(f["layers"]))}</p>')
    evidence = f.get("evidence") or {}
    if evidence:
        parts.append(
            table(["evidence", "value"], [[k, _evidence_value(v)] for k, v in evidence.items()])
        )
    remedies = f.get("remedies") or []
    if remedies:
        outcomes = remedy_outcomes(list(remedies), trials or [], metric)
        items = []
        for name in remedies:
            cls, words = outcomes.get(name, ("", ""))
            note_html = f' <span class="{esc(cls)}">({esc(words)})</span>' if words else ""
            items.append(f'<li data-remedy="{esc(name)}"><code>{esc(name)}</code>{note_html}</li>')
        parts.append(
            f'<p class="muted">remedies, best first:</p><ul class="remedies">{"".join(items)}</ul>'
        )
    if consequences:
        parts.append(
            f'<div class="consequences"><p class="muted">explained by this {esc(f.get("kind"))}'
            " (a consequence, not a second problem):</p>"
            + "".join(finding_card(c, trials, metric=metric) for c in consequences)
            + "</div>"
        )
    parts.append("</article>")
    return "".join(parts)


def finding_cards(
    findings: list[dict[str, Any]],
    trials: list[dict[str, Any]] | None = None,
    metric: str | None = None,
) -> list[str]:
    """The cards of a finding list: consequences under their root cause, contradictions
    reconciled in words (``facts.grouped_findings``, ``facts.finding_notes``)."""
    notes = facts.finding_notes(findings)
    return [
        finding_card(root, trials, notes.get(str(root.get("kind"))), consequences, metric)
        for root, consequences in facts.grouped_findings(findings)
    ]


def findings_section(data: dict[str, Any]) -> str:
    if "findings" not in data:
        return ""
    trials = data.get("trials") or []
    out = ['<section id="findings"><h2>Findings</h2>']
    if "findings_before" in data:
        before = data.get("findings_before") or []
        out.append("<h3>Before treatment</h3>")
        metric = (data.get("scoring") or {}).get("metric")
        out += finding_cards(before, trials, metric) or ["<p>No findings.</p>"]
        out.append("<h3>After treatment</h3>")
        after = data.get("findings") or []
        # The cards above carry the evidence; after treatment, what remains is a short list.
        out.append(
            table(
                ["severity", "kind", "summary"],
                [
                    [f.get("severity"), f.get("kind"), readable(str(f.get("summary", "")))]
                    for root, consequences in facts.grouped_findings(after)
                    for f in (root, *consequences)
                ],
            )
            if after
            else "<p>No findings: nothing deepdoctor measures looks wrong.</p>"
        )
        out.append("</section>")
        return "".join(out)
    findings = data.get("findings") or []
    out += finding_cards(findings) or [
        "<p>No findings: nothing deepdoctor measures looks wrong.</p>"
    ]
    out.append("</section>")
    return "".join(out)


# -- treatment --------------------------------------------------------------------------------


def treatment_section(data: dict[str, Any]) -> str:
    if "trials" not in data and "before" not in data:
        return ""
    out = ['<section id="treatment"><h2>Treatment</h2>']
    if data.get("message"):
        out.append(f"<p>{esc(data['message'])}</p>")
    before, after = data.get("before") or {}, data.get("after") or {}
    keys = [
        k
        for k in (
            "train_loss",
            "train_accuracy",
            "val_loss",
            "val_accuracy",
            "val_balanced_accuracy",
        )
        if k in before or k in after
    ]
    if keys:
        rows: list[list[Any]] = []
        for k in keys:
            b, a = before.get(k), after.get(k)
            change = a - b if isinstance(a, int | float) and isinstance(b, int | float) else None
            if k.endswith("accuracy"):  # accuracies read best as percent and points
                shown = [facts.metric_value(v, facts.percent) for v in (b, a)]
                change_text = "n/a" if change is None else f"{100 * change:+.1f} points"
            else:
                shown = [facts.metric_value(v) for v in (b, a)]
                change_text = "n/a" if change is None else f"{change:+.4g}"
            rows.append([k, *shown, change_text])
        out.append("<h3>Before and after (same seed, same budget)</h3>")
        out.append(table(["metric", "untreated", "treated", "change"], rows))
    trials = data.get("trials") or []
    scoring = data.get("scoring") or {}
    metric = scoring.get("metric")
    if scoring.get("why"):
        out.append(
            f"<p>Runs compared by {esc(str(metric).replace('_', ' '))}: {esc(scoring['why'])}.</p>"
        )
    if trials:
        rows = []
        for t in trials:
            rows.append(
                [
                    "+".join(t.get("remedies", [])),
                    facts.trial_stage(t),
                    t.get("steps") or None,
                    facts.trial_outcome(t, trials, metric)[1],
                ]
            )
        out.append("<h3>Every remedy tried</h3>")
        out.append(
            table(
                [
                    "remedies",
                    "stage",
                    "steps",
                    "result (against the untreated run at the same steps)",
                ],
                rows,
            )
        )
    if data.get("snippet"):
        out.append(f"<h3>The changes, as code</h3><pre>{esc(data['snippet'])}</pre>")
    out.append("</section>")
    return "".join(out)


# -- plots sections ---------------------------------------------------------------------------


def gradient_section(data: dict[str, Any]) -> str:
    trace = data.get("trace")
    if not trace:
        return ""
    speed = plots.learning_speed(data.get("learning_speed"))
    figs = figure(plots.gradient_heatmap(trace)) + (
        figure(speed)
        if speed
        else '<p class="muted">The learning speed per layer is not in this file (it was '
        "written before deepdoctor stored it); diagnose the run again to draw it.</p>"
    )
    if not figs:
        return ""
    return f'<section id="gradient-flow"><h2>Gradient flow</h2>{figs}</section>'


def activation_section(data: dict[str, Any]) -> str:
    trace = data.get("trace")
    if not trace:
        return ""
    fig = figure(plots.activation_health(trace))
    if not fig:
        fig = (
            "<p>No activation modules with a dead or saturated fraction were recorded "
            "(activations applied as functions, such as <code>F.relu</code>, are not "
            "seen).</p>"
        )
    return f'<section id="activation-health"><h2>Activation health</h2>{fig}</section>'


def curves_section(data: dict[str, Any]) -> str:
    if "history_after" in data or "history_before" in data:
        plot = plots.training_curves(data.get("history_after"), data.get("history_before"))
    elif "history" in data:
        plot = plots.training_curves(data.get("history"), stopped=data.get("stopped"))
    else:
        return ""
    if plot is None:
        return ""
    return f'<section id="curves"><h2>Training curves</h2>{figure(plot)}</section>'


CHECKUP_COLUMNS = [
    "name",
    "type",
    "out_mean",
    "out_std",
    "grad_norm",
    "grad_to_weight",
    "dead_frac",
    "saturated_frac",
]


def checkup_section(data: dict[str, Any]) -> str:
    if "layers" not in data and "depth" not in data and "loss" not in data:
        return ""
    out = ['<section id="checkup"><h2>Checkup at initialisation</h2>']
    depth = data.get("depth") or {}
    if depth:
        out.append(table(["depth", "value"], [[k, v] for k, v in depth.items()]))
    out.append(figure(plots.depth_profile(data.get("layers") or [], depth)))
    loss = data.get("loss") or {}
    if loss:
        out.append("<h3>Loss at initialisation</h3>")
        out.append(table(["quantity", "value"], [[k, v] for k, v in loss.items()]))
    if data.get("input"):
        out.append("<h3>Input</h3>")
        out.append(
            table(
                ["statistic", "value"], [[k, _evidence_value(v)] for k, v in data["input"].items()]
            )
        )
    layers = data.get("layers") or []
    if layers:
        rows = [[layer.get(c) for c in CHECKUP_COLUMNS] for layer in layers]
        out.append(
            f"<details><summary>Per-layer numbers ({len(layers):,} layers)</summary>"
            f"{table(CHECKUP_COLUMNS, rows)}</details>"
        )
    out.append("</section>")
    return "".join(out)


COMPLEXITY_COLUMNS = ["name", "type", "params", "connections", "reuse", "flops"]


def complexity_section(data: dict[str, Any]) -> str:
    complexity = data.get("complexity")
    if not complexity:
        return ""
    rows = [[layer.get(c) for c in COMPLEXITY_COLUMNS] for layer in complexity.get("layers", [])]
    total = complexity.get("total") or {}
    total_row = (
        ["total", "", total.get("params"), total.get("connections"), "", total.get("flops")]
        if total
        else None
    )
    out = [
        '<section id="complexity"><h2>Complexity</h2>',
        "<p>Per layer: trainable parameters, connections (multiply-adds of one forward "
        "pass over one sample), how often each weight is reused, and FLOPs per sample.</p>",
        table(COMPLEXITY_COLUMNS, rows, total_row),
    ]
    extra = [
        [k, v]
        for k, v in (
            ("activation memory (bytes per sample)", total.get("activation_bytes")),
            ("parameters per training sample", complexity.get("params_per_sample")),
        )
        if v is not None
    ]
    if extra:
        out.append(table(["quantity", "value"], extra))
    out.append("</section>")
    return "".join(out)


def compression_section(data: dict[str, Any]) -> str:
    """Accuracy against connections, and every point's figures (deepdoctor.compress)."""
    if not data.get("baseline"):
        return ""
    skipped = "".join(
        f"<li><code>{esc(s.get('method'))}</code> skipped: {esc(s.get('reason'))}</li>"
        for s in data.get("skipped") or []
    )
    return (
        '<section id="compression"><h2>Compression</h2>'
        + figure(compression.tradeoff_plot(data))
        + table(compression.COLUMNS, compression.point_rows(data))
        + f'<p class="muted">Latency: {esc(data.get("latency_how", ""))}.</p>'
        + (f"<ul>{skipped}</ul>" if skipped else "")
        + "</section>"
    )


# -- the page ---------------------------------------------------------------------------------

SECTIONS: list[tuple[str, str, Callable[[dict[str, Any]], str]]] = [
    ("findings", "Findings", findings_section),
    ("treatment", "Treatment", treatment_section),
    ("gradient-flow", "Gradient flow", gradient_section),
    ("activation-health", "Activation health", activation_section),
    ("curves", "Curves", curves_section),
    ("checkup", "Checkup", checkup_section),
    ("complexity", "Complexity", complexity_section),
    ("compression", "Compression", compression_section),
]


def _header(data: dict[str, Any]) -> str:
    healthy = not facts.problems(data)
    experiment = data.get("experiment") or {}
    sub = [experiment.get("description", "")]
    sub.append(
        ", ".join(
            f"{k.replace('_', ' ')} {facts.number(experiment[k])}"
            for k in ("steps", "batch_size", "seed")
            if experiment.get(k) is not None
        )
    )
    numbers = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts.key_numbers(data))
    return (
        f"<header><h1>{esc(facts.title(data))}</h1>"
        + "".join(f'<p class="sub">{esc(s)}</p>' for s in sub if s)
        + f'<div class="headline {"healthy" if healthy else "unhealthy"}">'
        f"{esc(facts.headline(data))}</div>"
        + (f'<dl class="numbers">{numbers}</dl>' if numbers else "")
        + "</header>"
    )


NOTEBOOK_SCOPE = "deepdoctor-result"  # the CSS class the inline fragment's styles apply under


def _scoped(css: str) -> str:
    """The report page's CSS confined to the fragment, so a notebook's own styles stand."""
    rules = []
    for selectors, body in re.findall(r"([^{}]+)\{([^{}]*)\}", css):
        scoped = (
            f".{NOTEBOOK_SCOPE}" if s.strip() in ("body", "main") else f".{NOTEBOOK_SCOPE} {s}"
            for s in selectors.strip().split(",")
        )
        rules.append(f"{','.join(scoped)}{{{body}}}")
    return "".join(rules)


def fragment(data: dict[str, Any]) -> str:
    """The findings and key plots of a result for a notebook: the page's header, findings,
    treatment, checkup, gradient-flow and curves sections, with its styles scoped to one
    ``<div>`` (a fragment, not a page); the plots are embedded PNGs."""
    sections = (
        findings_section,
        treatment_section,
        checkup_section,
        gradient_section,
        curves_section,
    )
    body = _header(data) + "".join(section(data) for section in sections)
    return f'<div class="{NOTEBOOK_SCOPE}"><style>{_scoped(CSS)}</style>{body}</div>'


def render_html(data: dict[str, Any]) -> str:
    """The whole page as one string."""
    from ..version import __version__

    bodies = [(sid, label, build(data)) for sid, label, build in SECTIONS]
    present = [(sid, label, body) for sid, label, body in bodies if body]
    nav = "".join(f'<a href="#{sid}">{esc(label)}</a>' for sid, label, _ in present)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>deepdoctor: {esc(facts.title(data))}</title><style>{CSS}</style></head>"
        f"<body><main>{_header(data)}<nav>{nav}</nav>"
        + "".join(body for _, _, body in present)
        + f"<footer>deepdoctor {esc(__version__)} · schema {esc(data.get('schema', '?'))} "
        f"version {esc(data.get('schema_version', '?'))} · re-render with "
        "<code>deepdoctor report RESULT.json</code></footer></main></body></html>\n"
    )

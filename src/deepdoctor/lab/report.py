"""The lab's own small report: an HTML page with the claim, the verdict, tables and figures.

Figures are matplotlib PNGs embedded as base64 so the page is one self-contained file; the
same data is written as ``results.json`` beside the sweep's CSV.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from ._base import Conclusion, Lab, Row, Settings, fmt

VERDICT_COLOURS = {
    "supported": "#1a7f37",
    "partly supported": "#9a6700",
    "not reproduced": "#cf222e",
}


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return fmt(value)
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    return "" if value is None else str(value)


def _table(rows: list[Row]) -> str:
    if not rows:
        return ""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in columns) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _json_ready(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def results_dict(
    lab: Lab, settings: Settings, conclusion: Conclusion, rows: list[Row], ran: int, resumed: int
) -> dict[str, Any]:
    return _json_ready(
        {
            "schema": "deepdoctor.lab",
            "experiment": lab.name,
            "title": lab.title,
            "source": lab.source,
            "claim": lab.claim,
            "variant": settings.variant,
            "seed": settings.seed,
            "verdict": conclusion.verdict,
            "summary": conclusion.summary,
            "numbers": conclusion.numbers,
            "table": conclusion.table,
            "published": conclusion.published,
            "configurations": {"total": len(rows), "ran": ran, "resumed": resumed},
            "rows": rows,
        }
    )


def write_lab_report(
    out: Path,
    lab: Lab,
    settings: Settings,
    conclusion: Conclusion,
    rows: list[Row],
    ran: int,
    resumed: int,
) -> Path:
    """Write ``report.html`` and ``results.json`` into ``out``; return the HTML path."""
    doc = results_dict(lab, settings, conclusion, rows, ran, resumed)
    (out / "results.json").write_text(json.dumps(doc, indent=1, allow_nan=False))
    colour = VERDICT_COLOURS[conclusion.verdict]
    figures = "".join(
        f'<figure><img src="data:image/png;base64,{_png(fig)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for caption, fig in conclusion.figures
    )
    published = (
        f"<h2>Published numbers</h2>{_table(conclusion.published)}" if conclusion.published else ""
    )
    note = f"<p><em>{html.escape(lab.full_note)}</em></p>" if lab.full_note else ""
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>deepdoctor lab: {html.escape(lab.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; color: #1f2328; }}
table {{ border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }}
td, th {{ border: 1px solid #d0d7de; padding: 0.25rem 0.6rem; text-align: right; }}
th {{ background: #f6f8fa; }}
.verdict {{ font-weight: bold; color: {colour}; }}
figure {{ margin: 1rem 0; }} img {{ max-width: 100%; }}
figcaption {{ font-size: 0.9rem; color: #57606a; }}
</style></head><body>
<h1>{html.escape(lab.title)}</h1>
<p><strong>Source:</strong> {html.escape(lab.source)}</p>
<p><strong>Claim:</strong> {html.escape(lab.claim)}</p>
<p><strong>This run</strong> ({settings.variant} variant, seed {settings.seed},
{len(rows)} configurations, {resumed} resumed from the CSV):
<span class="verdict">{html.escape(conclusion.verdict)}</span>.</p>
<p>{html.escape(conclusion.summary)}</p>
{note}
<h2>Results</h2>{_table(conclusion.table)}
{published}
{figures}
<p>Raw results: <code>{html.escape(lab.name)}.csv</code>; everything above:
<code>results.json</code>.</p>
</body></html>
"""
    path = out / "report.html"
    path.write_text(page)
    return path

"""The shared shape of Checkup, Diagnosis and Treatment: findings, to_dict, save.

Every result serialises to one JSON document (``to_dict``) that carries everything the
report draws, so ``deepdoctor report RESULT.json`` can re-render a page from the file alone.
In a REPL ``print(result)`` gives the terminal summary; in a notebook the result shows its
findings and key plots inline (``_repr_html_``), drawn by the same code as the report page.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

from .findings import Finding, sort_findings

SCHEMA_VERSION = 1


class Result:
    """Base of the result objects. Subclasses set ``result_type`` and extend ``to_dict``.

    ``coverage`` (Checkup, Diagnosis): what the detectors had to read and what they could
    not judge (``deepdoctor.detectors.coverage``); empty for a result that judged no trace.
    """

    result_type = "result"
    findings: list[Finding]
    coverage: dict[str, Any]

    @property
    def healthy(self) -> bool:
        """True exactly when no finding has severity warning or critical."""
        return not any(f.is_problem for f in self.findings)

    @property
    def nothing_judged(self) -> list[str]:
        """Why nothing at all could be judged (no steps; or neither a loss nor a gradient),
        empty when something could: then ``healthy`` means no problem was found, not that
        none was looked for."""
        return list(getattr(self, "coverage", {}).get("nothing_judged") or [])

    @property
    def problems(self) -> list[Finding]:
        return [f for f in sort_findings(self.findings) if f.is_problem]

    def kinds(self) -> set[str]:
        return {f.kind for f in self.findings}

    def to_dict(self) -> dict[str, Any]:
        out = {
            "schema": f"deepdoctor.{self.result_type}",
            "schema_version": SCHEMA_VERSION,
            "healthy": self.healthy,
            "findings": [f.to_dict() for f in sort_findings(self.findings)],
        }
        if getattr(self, "coverage", None):
            out["coverage"] = self.coverage
        return out

    def __str__(self) -> str:
        """The terminal summary without colour, as wide as the terminal (80 when piped)."""
        from rich.console import Console

        from .report import print_summary

        out = io.StringIO()
        width = shutil.get_terminal_size().columns
        console = Console(file=out, width=width, no_color=True, force_terminal=False)
        print_summary(self.to_dict(), console)
        return "".join(line.rstrip() + "\n" for line in out.getvalue().splitlines())

    def _repr_html_(self) -> str:
        """The findings and key plots for a notebook: the report page's header, findings,
        treatment, checkup, gradient-flow and curves sections, with its styles scoped to
        one ``<div>`` (a fragment, not a page); the plots are embedded PNGs."""
        from .report import check_result, html

        return html.fragment(check_result(self.to_dict()))

    def save(self, directory: str | Path) -> Path:
        """Write ``report.html`` and ``<type>.json`` into ``directory``; return the HTML path."""
        from .report import write_report

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        (directory / f"{self.result_type}.json").write_text(
            json.dumps(data, indent=1, allow_nan=False)
        )
        return write_report(data, directory / "report.html")

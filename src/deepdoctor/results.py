"""The shared shape of Checkup, Diagnosis and Treatment: findings, to_dict, save.

Every result serialises to one JSON document (``to_dict``) that carries everything the
report draws, so ``deepdoctor report RESULT.json`` can re-render a page from the file alone.
"""

from __future__ import annotations

import json
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

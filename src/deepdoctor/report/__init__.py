"""Showing results: the HTML report (``write_report``) and the terminal summary.

Everything here draws from the JSON-ready dict a result's ``to_dict()`` returns (the layout
is documented in ``docs/json-schema.md`` and ``report/schema.json``), never from live
objects, so a saved ``diagnosis.json`` re-renders into the same page later:

>>> from deepdoctor.report import load_result, write_report   # doctest: +SKIP
>>> write_report(load_result("out/diagnosis.json"), "out/report.html")   # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .facts import headline, key_numbers
from .terminal import print_summary

# The result documents this version of deepdoctor reads, and the newest version of each.
SCHEMAS = {
    "deepdoctor.diagnosis": 1,
    "deepdoctor.checkup": 1,
    "deepdoctor.treatment": 1,
    "deepdoctor.compression": 1,
}
SCHEMA_FILE = Path(__file__).with_name("schema.json")

__all__ = [
    "SCHEMAS",
    "SCHEMA_FILE",
    "check_result",
    "headline",
    "key_numbers",
    "load_result",
    "print_summary",
    "render_html",
    "write_report",
]


def check_result(data: Any, source: str = "the result") -> dict[str, Any]:
    """Check that ``data`` is a result document this deepdoctor can draw; return it."""
    if not isinstance(data, dict):
        raise ValueError(
            f"{source} is not a deepdoctor result: expected a JSON object, got "
            f"{type(data).__name__}"
        )
    schema = data.get("schema")
    if schema not in SCHEMAS:
        raise ValueError(
            f"{source} has schema {schema!r}, which deepdoctor cannot draw; expected one of "
            f"{', '.join(SCHEMAS)} (the JSON file a result's save(dir) writes)"
        )
    version = data.get("schema_version")
    if (
        not isinstance(version, int)
        or isinstance(version, bool)
        or not (1 <= version <= SCHEMAS[schema])
    ):
        raise ValueError(
            f"{source} is {schema} version {version!r}, but this deepdoctor reads versions "
            f"1 to {SCHEMAS[schema]}; upgrade deepdoctor to draw it"
        )
    if not isinstance(data.get("findings", []), list):
        raise ValueError(f"{source}: 'findings' must be a list of finding objects")
    return data


def load_result(path: str | Path) -> dict[str, Any]:
    """Read a result JSON file (``diagnosis.json`` ...), checking that it is one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no result file at {path}; give the JSON file a result's save(dir) or a "
            "command's --out DIR wrote (e.g. deepdoctor-out/diagnosis.json)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{path} is not valid JSON ({exc}); give the JSON file a result's save(dir) wrote"
        ) from exc
    return check_result(data, str(path))


def render_html(data: dict[str, Any]) -> str:
    """The report page for ``data`` as one HTML string."""
    from .html import render_html as render  # matplotlib loads only when a page is drawn

    return render(check_result(data))


def write_report(data: dict[str, Any], path: str | Path) -> Path:
    """Render ``data`` (a result's ``to_dict()``) into one self-contained HTML file at ``path``."""
    page = render_html(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path

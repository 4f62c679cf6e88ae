"""The architecture: import contracts between rooms, and no private names across them.

A room is a top-level module or subpackage of deepdoctor (``deepdoctor.probe``,
``deepdoctor.detectors``). The contracts live in pyproject.toml under ``[tool.importlinter]``
and run here and in ``make lint``.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "deepdoctor"


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    found = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = module_files()


def room(module: str) -> str:
    """``deepdoctor.detectors._common`` -> ``deepdoctor.detectors``; the root is its own."""
    return ".".join(module.split(".")[:2])


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def lint_imports() -> str:
    executable = Path(sys.executable).with_name("lint-imports")
    found = str(executable) if executable.exists() else shutil.which("lint-imports")
    if found is None:
        pytest.fail("lint-imports is missing: `make install` installs the dev extra with it")
    return found


def test_import_contracts_hold() -> None:
    done = subprocess.run(
        [lint_imports(), "--no-cache", "--no-logo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def function_level_imports() -> list[tuple[str, str, int]]:
    """(importer, imported module, line) for each import of a deepdoctor module made inside a
    function: the lazy ones, which a contract must see as well."""
    found = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                for target, _ in imported(module, path, node):
                    found.append((module, target, node.lineno))
    return found


def test_import_linter_sees_imports_inside_functions() -> None:
    grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter")
    lazy = function_level_imports()
    assert lazy, "expected at least one import inside a function (results -> report is one)"
    graph = grimp.build_graph(PACKAGE, cache_dir=None)
    unseen = [
        f"{importer} -> {target} (line {line})"
        for importer, target, line in lazy
        if not graph.direct_import_exists(importer=importer, imported=target)
    ]
    assert not unseen, "import-linter's graph misses: " + "; ".join(unseen)


# -- private names ------------------------------------------------------------------------


@dataclass(frozen=True)
class Reach:
    """One place where a module uses a private name of another room."""

    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def imported(module: str, path: Path, node: ast.AST) -> list[tuple[str, str | None]]:
    """(deepdoctor module, name taken from it or None) for an import statement."""
    if isinstance(node, ast.Import):
        return [(a.name, None) for a in node.names if a.name.split(".")[0] == PACKAGE]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = package_of(module, path).split(".")
        base = base[: len(base) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source.split(".")[0] != PACKAGE:
        return []
    out: list[tuple[str, str | None]] = []
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        out.append((sub, None) if sub in MODULES else (source, alias.name))
    return out


def private_reaches(module: str, path: Path, source: str) -> list[Reach]:
    """Private names of another room that ``module`` imports or reads as an attribute: a
    private module on the way (``deepdoctor.detectors._common``), a private name imported
    from one (``from .probe import _norms``) or read from one (``probe._norms``)."""
    here = room(module)
    shown = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    reaches = []
    modules_bound: dict[str, str] = {}  # local name -> the deepdoctor module it is
    tree = ast.parse(source, shown)

    def foreign(target: str) -> bool:
        return room(target) != here

    for node in ast.walk(tree):
        for target, name in imported(module, path, node):
            if foreign(target) and any(is_private(p) for p in target.split(".")):
                reaches.append(Reach(shown, node.lineno, f"imports private module {target}"))
            elif foreign(target) and name is not None and is_private(name):
                reaches.append(Reach(shown, node.lineno, f"imports {target}.{name}"))
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    local = alias.asname or PACKAGE
                    modules_bound[local] = alias.name if alias.asname else PACKAGE
        elif isinstance(node, ast.ImportFrom) and (taken := imported(module, path, node)):
            for (target, name), alias in zip(taken, node.names, strict=True):
                if name is None:
                    modules_bound[alias.asname or alias.name] = target

    def module_named(expr: ast.expr) -> str | None:
        if isinstance(expr, ast.Name):
            return modules_bound.get(expr.id)
        if isinstance(expr, ast.Attribute):
            parent = module_named(expr.value)
            if parent is not None and f"{parent}.{expr.attr}" in MODULES:
                return f"{parent}.{expr.attr}"
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            owner = module_named(node.value)
            if owner is not None and foreign(owner):
                reaches.append(Reach(shown, node.lineno, f"reads {owner}.{node.attr}"))
    return sorted(set(reaches), key=lambda r: (r.path, r.line, r.what))


def test_no_module_reaches_for_a_private_name_of_another_room() -> None:
    reaches = [
        reach
        for module, path in MODULES.items()
        for reach in private_reaches(module, path, path.read_text())
    ]
    assert not reaches, "private names used across rooms:\n" + "\n".join(map(str, reaches))


@pytest.mark.parametrize(
    ("module", "file", "source", "expected"),
    [
        (
            "deepdoctor.checkup",
            "checkup.py",
            "from .probe import _norms",
            ["deepdoctor.probe._norms"],
        ),
        (
            "deepdoctor.checkup",
            "checkup.py",
            "from . import probe\nprobe._norms(1)",
            ["probe._norms"],
        ),
        (
            "deepdoctor.checkup",
            "checkup.py",
            "import deepdoctor as dd\ndd.detectors._common.x",
            ["reads deepdoctor.detectors._common"],
        ),
        ("deepdoctor.checkup", "checkup.py", "from .detectors._common import x", ["_common"]),
        ("deepdoctor.lab.depth", "lab/depth.py", "from .._hidden import x", ["deepdoctor._hidden"]),
        ("deepdoctor.detectors.loss", "detectors/loss.py", "from ._common import _x", []),
        ("deepdoctor.detectors.loss", "detectors/loss.py", "from ..trace import json_ready", []),
        ("deepdoctor.lab.depth", "lab/depth.py", "from ._base import _fit", []),
        ("deepdoctor.cli", "cli.py", "from .version import __version__", []),
    ],
)
def test_private_reaches_tells_rooms_apart(
    module: str, file: str, source: str, expected: list[str]
) -> None:
    found = private_reaches(module, SRC / PACKAGE / file, source)
    assert len(found) == len(expected), found
    for reach, part in zip(found, expected, strict=True):
        assert part in reach.what, reach

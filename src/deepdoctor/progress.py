"""Progress bars that show on a terminal and stay silent in logs and pipes."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def stderr_console() -> Console:
    return Console(stderr=True, no_color="NO_COLOR" in os.environ)


def interactive() -> bool:
    """True when stderr is a terminal: only then is a live progress bar worth drawing."""
    return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


class _Bar:
    def __init__(self, progress: Progress | None, task: Any) -> None:
        self._progress = progress
        self._task = task

    def advance(self, n: int = 1, **fields: float) -> None:
        if self._progress is None:
            return
        info = "  ".join(f"{k} {v:.4g}" for k, v in fields.items())
        self._progress.update(self._task, advance=n, info=info)


@contextmanager
def progress_bar(total: int, description: str, enabled: bool = True) -> Iterator[_Bar]:
    """A rich progress bar on stderr when ``enabled`` and stderr is a terminal; else no-op."""
    if not (enabled and interactive()):
        yield _Bar(None, None)
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=stderr_console(),
        transient=True,
    )
    with progress:
        task = progress.add_task(description, total=total, info="")
        yield _Bar(progress, task)

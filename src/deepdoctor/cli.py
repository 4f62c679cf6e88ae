"""The ``deepdoctor`` command line.

Each command lives in ``deepdoctor/commands/<name>.py`` with ``register(subparsers)``, which
adds its parser and sets ``func(args) -> exit code``. Exit codes: 0 healthy / success,
1 warning or critical findings, 2 a usage error (a message on stderr saying what to fix).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .progress import stderr_console
from .targets import TargetError
from .version import __version__

COMMANDS = [
    "data",
    "demo",
    "report",
    "treat",
    "compress",
    "checkup",
    "complexity",
    "diagnose",
    "presets",
    "lab",
]
EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """An error the user caused; printed in one line with exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepdoctor",
        description="Find out why a deep network trains badly, fix it, and prove the fix.",
    )
    parser.add_argument("--version", action="version", version=f"deepdoctor {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch CPU threads (default 1, or $DEEPDOCTOR_THREADS): deepdoctor's runs are "
        "small, and on a busy machine a second thread waiting for a core made them 4-6x "
        "slower; raise it for large models on an idle machine",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"deepdoctor.commands.{name}").register(sub)
    return parser


def set_threads(threads: int | None) -> None:
    """One torch thread unless asked otherwise (see --threads for why)."""
    import os

    import torch

    if threads is None:
        env = os.environ.get("DEEPDOCTOR_THREADS", "1")
        try:
            threads = int(env)
        except ValueError:
            raise UsageError(
                f"DEEPDOCTOR_THREADS must be a whole number >= 1, got {env!r}"
            ) from None
    if threads < 1:
        raise UsageError(f"--threads must be a whole number >= 1, got {threads}")
    torch.set_num_threads(threads)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        set_threads(args.threads)
        return int(args.func(args))
    except (UsageError, TargetError, ValueError, TypeError, FileNotFoundError) as exc:
        if args.debug:
            raise
        stderr_console().print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        stderr_console().print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

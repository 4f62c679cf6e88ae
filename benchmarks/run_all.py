"""Run the benchmarks of issue 8, one after another, each in its own process (`make bench`).

Every script prints ratios measured side by side within its own run; this one only runs
them in order and prints their output as it comes. A script that is not there yet is
reported as missing; one that fails is reported with its exit code, and the rest still run.
The long ones run only when asked: ``--largest`` (the largest transformer diagnose handles
in 10 minutes: 20 to 40 minutes) and ``--moonshot`` (up to 30 minutes).

    .venv/bin/python benchmarks/run_all.py [--quick] [--largest] [--moonshot] [NAME ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (script, the flag it needs to run, if any), in the order of issue 8's list.
SCRIPTS = [
    ("probe_overhead", None),
    ("peers", None),
    ("memory", None),
    ("checkup_speed", None),
    ("diagnose_cost", None),
    ("treat_cost", None),
    ("largest_model", "largest"),
    ("moonshot", "moonshot"),
]


def takes_quick(path: Path) -> bool:
    return '"--quick"' in path.read_text()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick: small sizes")
    parser.add_argument("--largest", action="store_true", help="also run largest_model")
    parser.add_argument("--moonshot", action="store_true", help="also run moonshot")
    parser.add_argument("names", nargs="*", help="run only these scripts")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - {name for name, _ in SCRIPTS})
    if unknown:
        parser.error(
            f"unknown benchmark(s) {', '.join(unknown)}; known: "
            + ", ".join(name for name, _ in SCRIPTS)
        )
    summary: list[tuple[str, str]] = []
    for name, flag in SCRIPTS:
        if args.names and name not in args.names:
            continue
        path = HERE / f"{name}.py"
        if flag and not getattr(args, flag) and name not in args.names:
            summary.append((name, f"skipped (long: pass --{flag})"))
            continue
        if not path.exists():
            summary.append((name, f"missing ({path.relative_to(HERE.parent)} does not exist)"))
            continue
        command = [sys.executable, str(path)]
        note = ""
        if args.quick:
            if takes_quick(path):
                command.append("--quick")
            else:
                note = ", full size: it takes no --quick"
        shown = " ".join([str(path.relative_to(HERE.parent)), *command[2:]])
        print(f"\n=== {name} ({shown}) ===", flush=True)
        start = time.perf_counter()
        code = subprocess.run(command, cwd=HERE.parent).returncode
        minutes = (time.perf_counter() - start) / 60
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        summary.append((name, f"{status}, {minutes:.1f} min{note}"))
    print("\n=== summary ===")
    for name, status in summary:
        print(f"{name:<16} {status}")
    return 1 if any("FAILED" in status for _, status in summary) else 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m tests.cases.sweep [--seeds 0 1 2] [--out DIR] [--pattern P ...]``: the calibration
suite at several seeds, judged separately on its tuning and held-out halves.

Every case runs at every seed (one torch thread). DIR gets ``sweep.json`` (per case and seed:
the kinds raised at warning / critical, the kinds noted at info, the crash if any, seconds) and
``sweep.md`` (a confusion table for the tuning half, the held-out half and all cases, and the
summary figures). Counts are over (case, seed) pairs. DIR defaults to a folder in the system's
temp dir, so that results never land in the checkout.

From a test: ``results = sweep(cases, seeds)``, then ``summary(results)``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import CASES, HELD_OUT_FAMILIES, Case, CaseResult, confusion, describe, run_case

DEFAULT_OUT = Path(tempfile.gettempdir()) / "deepdoctor-calibration"
HALVES = ("tuning", "held-out", "all")


def sweep(
    cases: Iterable[Case],
    seeds: Sequence[int],
    progress: Callable[[CaseResult], None] | None = None,
    run: Callable[..., CaseResult] = run_case,
) -> list[CaseResult]:
    """Every case at every seed, case by case; a crash is recorded, never raised. ``run``:
    how one case is run at one seed (the tests pass ``run_case_once``)."""
    torch.set_num_threads(1)
    results = []
    for case in cases:
        for seed in seeds:
            result = run(case, seed=seed)
            results.append(result)
            if progress is not None:
                progress(result)
    return results


def halves(results: list[CaseResult]) -> dict[str, list[CaseResult]]:
    return {
        "tuning": [r for r in results if not r.case.held_out],
        "held-out": [r for r in results if r.case.held_out],
        "all": results,
    }


def summary(results: list[CaseResult]) -> dict[str, int | float | None]:
    """The held-out benchmark's figures over (case, seed) pairs: recall of the expected kinds
    at warning / critical, healthy runs with any warning, pairs with an alarm outside their
    labels (once a pair however many kinds), crashes."""
    expected = sum(len(r.case.expected) for r in results)
    found = sum(len(r.case.expected & r.raised) for r in results)
    healthy = [r for r in results if r.case.healthy]
    return {
        "pairs": len(results),
        "right": sum(r.ok for r in results),
        "expected": expected,
        "found": found,
        "recall": found / expected if expected else None,
        "healthy": len(healthy),
        "healthy_warned": sum(bool(r.raised) for r in healthy),
        "off_label": sum(bool(r.false_alarms) for r in results),
        "crashes": sum(r.crashed is not None for r in results),
    }


def to_json(results: list[CaseResult], meta: dict[str, object]) -> dict[str, object]:
    runs = [
        {
            "case": r.case.name,
            "family": r.case.family,
            "half": "held-out" if r.case.held_out else "tuning",
            "healthy": r.case.healthy,
            "expected": sorted(r.case.expected),
            "allowed": sorted(r.case.allowed),
            "seed": r.seed,
            "raised": sorted(r.raised),
            "info": sorted(r.noted),
            "crashed": r.crashed,
            "seconds": round(r.seconds, 2),
        }
        for r in results
    ]
    return {
        **meta,
        "held_out_families": sorted(HELD_OUT_FAMILIES),
        "summary": {half: summary(rs) for half, rs in halves(results).items()},
        "runs": runs,
    }


def fraction(count: int, total: int) -> str:
    return f"{count} / {total} ({count / total:.1%})" if total else "0 / 0"


def markdown(results: list[CaseResult], heading: str = "###") -> str:
    """The summary figures, the three confusion tables and the wrong pairs, as markdown whose
    sections start at ``heading``."""
    parts = halves(results)
    sums = {half: summary(rs) for half, rs in parts.items()}
    rows = [
        ("recall (expected kinds found at warning / critical)", "found", "expected"),
        ("healthy runs with any warning", "healthy_warned", "healthy"),
        ("cases with an alarm outside their labels", "off_label", "pairs"),
        ("crashes", "crashes", "pairs"),
        ("(case, seed) pairs fully right", "right", "pairs"),
    ]
    out = [
        f"{heading} Summary",
        "",
        "| figure | " + " | ".join(HALVES) + " |",
        "| --- | " + " | ".join("---" for _ in HALVES) + " |",
    ]
    for label, count, total in rows:
        cells = [fraction(int(sums[h][count] or 0), int(sums[h][total] or 0)) for h in HALVES]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    for half in HALVES:
        families = sorted({r.case.family for r in parts[half]})
        n = len({r.case.name for r in parts[half]})
        out += [
            "",
            f"{heading} Confusion: {half} ({n} case{'s' * (n != 1)}, {len(parts[half])} pairs; "
            f"{', '.join(families)})",
            "",
            "| kind | expected | found | missed | false alarm | allowed extra |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for kind, row in confusion(parts[half]).items():
            out.append(
                f"| {kind} | {row['expected']} | {row['found']} | {row['missed']} | "
                f"{row['false_alarm']} | {row['allowed']} |"
            )
    wrong = [r for r in results if not r.ok]
    out += ["", f"{heading} Wrong (case, seed) pairs: {len(wrong)}", ""]
    if wrong:
        out += [
            "| case | family | half | seed | missed | false alarms | crash |",
            "| --- | --- | --- | ---: | --- | --- | --- |",
        ]
        for r in wrong:
            out.append(
                f"| {r.case.name} | {r.case.family} | "
                f"{'held-out' if r.case.held_out else 'tuning'} | {r.seed} | "
                f"{', '.join(sorted(r.missed)) or '-'} | "
                f"{', '.join(sorted(r.false_alarms)) or '-'} | {r.crashed or '-'} |"
            )
    return "\n".join(out)


def revision(folder: Path) -> str | None:
    """The commit the deepdoctor source was checked out at, ``-dirty`` if it has changes."""
    try:
        return subprocess.run(
            ["git", "-C", str(folder), "describe", "--always", "--dirty", "--abbrev=7"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.cases.sweep", description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    parser.add_argument(
        "--pattern", nargs="+", default=[""], help="only cases whose name or family contains one"
    )
    args = parser.parse_args(argv)
    cases = [c for c in CASES if any(p in c.name or p in c.family for p in args.pattern)]
    if not cases:
        parser.error(f"no case matches {args.pattern}")

    import deepdoctor

    started = time.time()
    load = os.getloadavg()
    results = sweep(cases, args.seeds, progress=lambda r: print(describe(r), flush=True))
    seconds = time.time() - started
    meta = {
        "command": " ".join([Path(sys.executable).name, "-m", "tests.cases.sweep", *sys.argv[1:]]),
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "seeds": list(args.seeds),
        "cases": len(cases),
        "deepdoctor": str(Path(deepdoctor.__file__).parent),
        "deepdoctor_commit": revision(Path(deepdoctor.__file__).parent),
        "pythonpath": os.environ.get("PYTHONPATH"),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_start": [round(x, 2) for x in load],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps(to_json(results, meta), indent=1) + "\n")
    title = (
        f"# Calibration sweep\n\n{len(cases)} cases x seeds {', '.join(map(str, args.seeds))} = "
        f"{len(results)} (case, seed) pairs in {seconds / 60:.1f} min; deepdoctor from "
        f"`{meta['deepdoctor']}` ({meta['deepdoctor_commit']}); held-out families: "
        f"{', '.join(sorted(HELD_OUT_FAMILIES))}.\n\n"
    )
    (args.out / "sweep.md").write_text(title + markdown(results, heading="##") + "\n")
    print()
    print(markdown(results))
    print(f"\n{len(results)} runs in {seconds:.0f} s; written to {args.out}")


if __name__ == "__main__":
    main()

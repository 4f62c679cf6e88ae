"""``python -m tests.cases [PATTERN]``: run the calibration suite and print the confusion table."""

from __future__ import annotations

import sys
import time

from . import CASES, format_confusion, run_case

if __name__ == "__main__":
    patterns = sys.argv[1:] or [""]
    started = time.time()
    results = []
    for case in CASES:
        if any(p in case.name for p in patterns):
            t = time.time()
            result = run_case(case)
            results.append(result)
            print(
                f"{'ok ' if result.ok else 'BAD'} {case.name:48s} {time.time() - t:5.1f}s  "
                f"raised {sorted(result.raised)}  info {sorted(result.noted)}",
                flush=True,
            )
    print()
    print(format_confusion(results))
    print(f"{len(results)} cases in {time.time() - started:.0f} s")

"""``python -m tests.cases [PATTERN]``: run the calibration suite and print the confusion table.

Each case runs at its own seed (0); ``python -m tests.cases.sweep`` runs several seeds and
splits the table into the tuning and held-out halves.
"""

from __future__ import annotations

import sys
import time

from . import CASES, describe, format_confusion, run_case

if __name__ == "__main__":
    patterns = sys.argv[1:] or [""]
    started = time.time()
    results = []
    for case in CASES:
        if any(p in case.name for p in patterns):
            result = run_case(case)
            results.append(result)
            print(describe(result), flush=True)
    print()
    print(format_confusion(results))
    print(f"{len(results)} cases in {time.time() - started:.0f} s")

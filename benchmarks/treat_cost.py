"""treat against a random-remedy search on the same budget, and treat's compute (issue 6, 8).

A published study (ICST 2023) found that random fixes repaired about as many models as the
repair tools did. Here both searches share everything but the choice of candidates: the
same baseline, the same noise measurement, the same screening, combination and verification
(``deepdoctor.treat`` with ``remedies=`` a random draw of as many remedy names as treat may
screen), on the same seed and budget. The difference measured is what the diagnosis adds.

A case counts as repaired when a remedy was kept (it beat the untreated run's validation
score by more than the measured seed noise, over the full budget) and none of the case's
expected problem kinds is left at warning or critical. Healthy cases count the opposite
way: a remedy kept on them is a false treatment.

Cases: the issue's four (the demo's 50-layer sigmoid MLP, a diverging 20-layer ReLU MLP, a
healthy MLP, an overfitting MLP) and the calibration suite's cases (tests/cases). Each
finished case is appended to a CSV, so an interrupted run resumes where it stopped.

    .venv/bin/python benchmarks/treat_cost.py [--quick] [--random-draws 1] [--csv FILE]
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.cases, the calibration suite

from deepdoctor.experiment import Experiment  # noqa: E402
from deepdoctor.presets import get_preset  # noqa: E402
from deepdoctor.remedies import REMEDIES  # noqa: E402
from deepdoctor.treat import MAX_CANDIDATES, Treatment, treat  # noqa: E402

FIELDS = [
    "case",
    "source",
    "search",
    "draw",
    "healthy_case",
    "applied",
    "before",
    "after",
    "compute",
    "cleared",
    "repaired",
    "seconds",
]


@dataclass
class Case:
    name: str
    source: str
    build: Callable[[], Experiment]
    expected: frozenset[str]
    healthy: bool


def issue_cases() -> list[Case]:
    return [
        Case(
            "sigmoid-mlp50-digits",
            "issue",
            lambda: get_preset("sigmoid-mlp50-digits"),
            frozenset({"vanishing_gradients"}),
            False,
        ),
        Case(
            "diverging-relu-mlp20-digits",
            "issue",
            lambda: get_preset("diverging-relu-mlp20-digits"),
            frozenset({"diverging_loss", "nonfinite"}),
            False,
        ),
        Case(
            "healthy-mlp-digits",
            "issue",
            lambda: get_preset("healthy-mlp-digits"),
            frozenset(),
            True,
        ),
        Case(
            "overfitting-noisy-digits",
            "issue",
            lambda: get_preset("overfitting-noisy-digits"),
            frozenset({"overfitting"}),
            False,
        ),
    ]


def calibration_cases() -> list[Case]:
    from tests.cases import CASES

    return [Case(c.name, "calibration", c.build, c.expected, c.healthy) for c in CASES]


def row(case: Case, search: str, draw: int, tr: Treatment, seconds: float) -> dict[str, object]:
    left = {f.kind for f in tr.findings if f.is_problem}
    cleared = not (case.expected & left)
    kept = bool(tr.applied)
    before = tr.before.get("val_accuracy", -tr.before.get("val_loss", float("nan")))
    after = tr.after.get("val_accuracy", -tr.after.get("val_loss", float("nan")))
    return {
        "case": case.name,
        "source": case.source,
        "search": search,
        "draw": draw,
        "healthy_case": int(case.healthy),
        "applied": "+".join(tr.applied),
        "before": f"{before:.4f}",
        "after": f"{after:.4f}",
        "compute": f"{tr.compute:.3f}",
        "cleared": int(cleared),
        "repaired": int(kept and cleared) if not case.healthy else int(not kept),
        "seconds": f"{seconds:.1f}",
    }


def random_draw(case: str, draw: int) -> list[str]:
    rng = random.Random(f"{case}/{draw}")  # the same draw on every machine and every rerun
    return rng.sample(sorted(REMEDIES), MAX_CANDIDATES)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the issue's four cases")
    parser.add_argument("--random-draws", type=int, default=1, help="random searches per case")
    parser.add_argument("--budget", type=float, default=3.0)
    parser.add_argument("--csv", type=Path, default=Path("deepdoctor-out/treat_cost.csv"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    cases = issue_cases() + ([] if args.quick else calibration_cases())
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    done: list[dict[str, str]] = []
    if args.csv.exists():
        with args.csv.open() as f:
            done = list(csv.DictReader(f))
    finished = {(r["case"], r["search"], r["draw"]) for r in done}
    new_file = not args.csv.exists()
    with args.csv.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        for case in cases:
            searches = [("treat", 0, None)] + [
                ("random", d, random_draw(case.name, d)) for d in range(args.random_draws)
            ]
            for search, draw, names in searches:
                if (case.name, search, str(draw)) in finished:
                    continue
                exp = case.build()
                started = time.perf_counter()
                tr = treat(exp, budget=args.budget, remedies=names)
                r = row(case, search, draw, tr, time.perf_counter() - started)
                writer.writerow(r)
                f.flush()
                done.append({k: str(v) for k, v in r.items()})
                print(
                    f"{case.name:34s} {search:6s} applied {r['applied'] or '-':30s} "
                    f"{r['before']} -> {r['after']}  compute {r['compute']}  "
                    f"repaired {r['repaired']}",
                    flush=True,
                )
    summarise([r for r in done if r["case"] in {c.name for c in cases}])
    return 0


def rate(rows: list[dict[str, str]], key: str) -> str:
    n = sum(int(r[key]) for r in rows)
    return f"{n:3d}/{len(rows):<3d} ({100 * n / len(rows):5.1f}%)"


def summarise(rows: list[dict[str, str]]) -> None:
    print(
        "\nrepaired: a remedy verified over the full budget and the expected problem gone"
        " (healthy: nothing applied); kept: a remedy verified; cleared: expected problem gone"
    )
    for source in ("issue", "calibration"):
        for healthy in ("0", "1"):
            label = f"{source} {'healthy' if healthy == '1' else 'broken'}"
            for search in ("treat", "random"):
                sel = [
                    r
                    for r in rows
                    if (r["source"], r["healthy_case"], r["search"]) == (source, healthy, search)
                ]
                if not sel:
                    continue
                kept = [dict(r, kept=str(int(bool(r["applied"])))) for r in sel]
                compute = [float(r["compute"]) for r in sel]
                print(
                    f"  {label:20s} {search:6s} repaired {rate(sel, 'repaired')}  "
                    f"kept {rate(kept, 'kept')}  cleared {rate(sel, 'cleared')}  "
                    f"compute mean {sum(compute) / len(compute):.2f} max {max(compute):.2f}"
                )


if __name__ == "__main__":
    raise SystemExit(main())

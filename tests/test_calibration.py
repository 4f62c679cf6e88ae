"""The calibration suite: every broken case shows the kinds it must, no healthy case warns.

The cases live in ``tests/cases`` (``python -m tests.cases`` prints the confusion table).
"""

from __future__ import annotations

import pytest
from cases import CASES, CaseResult, confusion, format_confusion, run_case_once

from deepdoctor.findings import KINDS

_RESULTS: dict[str, CaseResult] = {}
# A case with a named detector defect (Case.defect) is left out until the detector is fixed;
# the sweep (python -m tests.cases.sweep) still counts it. Never a way to pass a failing case
# by a weaker threshold: the defect text says what the detector gets wrong.
QUICK = [c for c in CASES if not c.defect]

# Misses the detectors are known to make at seed 0, with why; each is also in the sweep's
# tables (docs/calibration.md). The test fails when one stops being missed, so that the entry
# is removed rather than left to hide a later regression.
KNOWN_MISSES: dict[str, tuple[frozenset[str], str]] = {
    "still-improving-short-lstm-spirals-seq": (
        frozenset({"still_improving"}),
        "at seed 0 its 10-point validation curve jumps from 0.355 to 0.482 and back in its "
        "last half, so the power law through that half stands only 0.9 standard errors of "
        "its own noise below flat (3 needed), though verify.py measures twice the steps "
        "cutting the loss by 53%; found at seeds 1-2",
    ),
}

# Misses that depend on the CPU's floating-point rounding (the same torch, another vector
# unit: convolutions and reductions sum in another order, and a 1,000-step run drifts): found
# on one of the machines this suite has run on, missed on another. Either way passes here;
# the sweep's tables report both machines' figures (docs/calibration.md).
CPU_MARGINAL: dict[str, tuple[frozenset[str], str]] = {
    "still-improving-bn-cnn1d-mnist1d": (
        frozenset({"still_improving"}),
        "found at seed 0 on the machine of 2026-12-02; on the AMD EPYC of 2026-12-03 "
        "its 10-point validation curve rises from 0.241 to 0.295 and falls to 0.164 "
        "in its last half, so the power law stands 2.6 standard errors of its own "
        "residuals below flat (3 needed), 3.6 with the noise pooled from the training "
        "curve's residuals too (found since): one noisy point from either side",
    ),
}


@pytest.mark.parametrize("case", QUICK, ids=[c.name for c in QUICK])
def test_case(case) -> None:  # type: ignore[no-untyped-def]
    result = run_case_once(case, seed=0)  # the cases' own seed; shared with test_held_out
    _RESULTS[case.name] = result
    assert result.crashed is None, result.crashed  # run_case records a crash instead of raising
    if case.healthy:
        assert not result.raised, f"healthy case raised {sorted(result.raised)}"
    else:
        known = KNOWN_MISSES.get(case.name, (frozenset(), ""))[0]
        marginal = CPU_MARGINAL.get(case.name, (frozenset(), ""))[0]
        assert known <= result.missed <= known | marginal, (
            f"missed {sorted(result.missed)}, known {sorted(known)}, "
            f"CPU-marginal {sorted(marginal)}"
        )
        assert not result.false_alarms, f"false alarms {sorted(result.false_alarms)}"


def test_the_suite_covers_every_kind_twice_and_eight_healthy_setups() -> None:
    table = confusion([CaseResult(c, frozenset(), frozenset()) for c in CASES])
    assert all(table[k]["expected"] >= 2 for k in KINDS), table
    assert sum(c.healthy for c in CASES) >= 8


def test_confusion_table_has_no_miss_and_no_false_alarm() -> None:
    if len(_RESULTS) < len(QUICK):
        pytest.skip("needs the whole suite (run without -k)")
    results = [_RESULTS[c.name] for c in QUICK]
    print(format_confusion(results))
    known = [k for missed, _ in KNOWN_MISSES.values() for k in missed]
    marginal = [k for missed, _ in CPU_MARGINAL.values() for k in missed]
    for kind, row in confusion(results).items():
        assert row["false_alarm"] == 0, (kind, row)
        assert known.count(kind) <= row["missed"] <= known.count(kind) + marginal.count(kind), (
            kind,
            row,
        )

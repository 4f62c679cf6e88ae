"""The calibration suite: every broken case shows the kinds it must, no healthy case warns.

The cases live in ``tests/cases`` (``python -m tests.cases`` prints the confusion table).
"""

from __future__ import annotations

import pytest
from cases import CASES, CaseResult, confusion, format_confusion, run_case

from deepdoctor.findings import KINDS

_RESULTS: dict[str, CaseResult] = {}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case) -> None:  # type: ignore[no-untyped-def]
    result = run_case(case)
    _RESULTS[case.name] = result
    assert result.crashed is None, result.crashed  # run_case records a crash instead of raising
    if case.healthy:
        assert not result.raised, f"healthy case raised {sorted(result.raised)}"
    else:
        assert not result.missed, f"missed {sorted(result.missed)}"
        assert not result.false_alarms, f"false alarms {sorted(result.false_alarms)}"


def test_the_suite_covers_every_kind_twice_and_eight_healthy_setups() -> None:
    table = confusion([CaseResult(c, frozenset(), frozenset()) for c in CASES])
    assert all(table[k]["expected"] >= 2 for k in KINDS), table
    assert sum(c.healthy for c in CASES) >= 8


def test_confusion_table_has_no_miss_and_no_false_alarm() -> None:
    if len(_RESULTS) < len(CASES):
        pytest.skip("needs the whole suite (run without -k)")
    results = [_RESULTS[c.name] for c in CASES]
    print(format_confusion(results))
    for kind, row in confusion(results).items():
        assert row["missed"] == 0 and row["false_alarm"] == 0, (kind, row)

"""A checkup at initialisation agrees with what diagnose finds after training.

On every case of the calibration suite (``tests/cases``), for the kinds a checkup can see
before any step, the checkup's warning / critical findings must include the case's expected
kinds and stay within its expected + allowed kinds; a healthy case must come out healthy.

``python tests/test_checkup_agreement.py`` prints the agreement table.
"""

from __future__ import annotations

import pytest
from cases import CASES, Case

from deepdoctor.checkup import Checkup, checkup_experiment

# What a forward and backward pass at initialisation can show.
SEEABLE = frozenset(
    {
        "vanishing_gradients",
        "exploding_gradients",
        "saturated_units",
        "dead_units",
        "bad_init_loss",
        "unscaled_inputs",
        "class_imbalance",
        "nonfinite",
    }
)

# Cases whose expected seeable kind only training produces, with the reason.
EXCLUDED = {
    "nonfinite-adam-eps0-mlp-digits": (
        "the NaN comes from Adam's first update (0 / 0 with eps=0), not the model at init"
    ),
}


# Alarms a checkup is known to raise, with why. The test fails when one stops, so that the
# entry is removed rather than left to hide a later regression.
KNOWN_ALARMS: dict[str, tuple[frozenset[str], str]] = {
    "healthy-bert-tokens": (
        frozenset({"vanishing_gradients"}),
        "BERT's query / key projections start 1.7e4-2.4e4x behind its head (attention is "
        "uniform at BERT's N(0, 0.02^2) init) and catch up within a few steps; diagnose sees "
        "the catch-up and notes it at info, step 0 alone cannot tell it from vanishing",
    ),
}


def seen(chk: Checkup) -> set[str]:
    return {f.kind for f in chk.findings if f.is_problem} & SEEABLE


def agreement(case: Case) -> tuple[set[str], set[str], set[str]]:
    """(expected, allowed, found) seeable kinds of one case."""
    chk = checkup_experiment(case.build())
    expected = set(case.expected) & SEEABLE
    allowed = (set(case.expected) | set(case.allowed)) & SEEABLE
    return expected, allowed, seen(chk)


# ... and cases with a named detector defect (Case.defect), counted by the sweep until it is fixed
@pytest.mark.parametrize(
    "case", [c for c in CASES if c.name not in EXCLUDED and not c.defect], ids=lambda c: c.name
)
def test_checkup_agrees_with_the_case(case: Case) -> None:
    expected, allowed, found = agreement(case)
    known = KNOWN_ALARMS.get(case.name, (frozenset(), ""))[0]
    if case.healthy:
        assert found == known, f"false alarm on a healthy setup: {sorted(found - known)}"
        return
    assert expected <= found, f"missed {sorted(expected - found)}"
    assert found <= allowed, f"unexpected {sorted(found - allowed)}"


def test_exclusions_name_real_cases() -> None:
    assert set(EXCLUDED) <= {c.name for c in CASES}


def table() -> str:
    rows = ["| case | expected (seeable) | checkup found | agrees |", "| --- | --- | --- | --- |"]
    for case in CASES:
        expected, allowed, found = agreement(case)
        ok = expected <= found <= allowed
        verdict = "excluded" if case.name in EXCLUDED else ("yes" if ok else "NO")
        rows.append(
            f"| {case.name} | {', '.join(sorted(expected)) or '-'} | "
            f"{', '.join(sorted(found)) or '-'} | {verdict} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())

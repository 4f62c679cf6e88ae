"""The held-out half of the calibration suite at three seeds: the figures its thresholds were
not chosen on.

The families in ``tests/cases.HELD_OUT_FAMILIES`` (every CNN, transformer and RNN case, and
the MNIST-1D MLPs) were set aside before the thresholds of this round were chosen; the
thresholds chosen from numbers since (oscillation, underfitting) were read off the tuning
half only. Measured on 2026-12-01 (docs/calibration.md): recall 52 / 54, healthy runs with a
warning 1 / 15, pairs with an alarm outside their labels 1 / 63, no crash. The bounds below
are the project's targets where they are met (off-label <= 5%, no crash) and, where they are
not yet, one pair of slack beyond today's figures, so a regression fails the suite.
"""

from __future__ import annotations

from cases import CASES
from cases.sweep import summary, sweep

SEEDS = (0, 1, 2)


def test_the_held_out_half_at_three_seeds() -> None:
    # cases with a named detector defect (Case.defect) are counted by the sweep, not here
    held_out = [c for c in CASES if c.held_out and not c.defect]
    figures = summary(sweep(held_out, SEEDS))
    print(figures)
    assert figures["pairs"] == 3 * len(held_out) and figures["crashes"] == 0
    assert figures["off_label"] <= 0.05 * figures["pairs"], figures  # target: <= 5%
    assert figures["found"] >= figures["expected"] - 3, figures  # today: 2 missed
    assert figures["healthy_warned"] <= 2, figures  # today: 1 of 15 (target: 0)

"""The held-out half of the calibration suite at three seeds: the figures its thresholds were
not chosen on.

The families in ``tests/cases.HELD_OUT_FAMILIES`` (every CNN, transformer and RNN case, and
the MNIST-1D MLPs) were set aside before the thresholds of this round were chosen; the
thresholds chosen from numbers since (oscillation, underfitting) were read off the tuning
half only. Measured on 2026-12-02 (docs/calibration.md, 30 held-out cases): recall 67 / 69,
healthy runs with a warning 0 / 27, pairs with an alarm outside their labels 0 / 90, no
crash. The bounds below are the project's targets where they are met (no healthy warning,
off-label <= 5%, no crash) and, for recall, one pair of slack beyond the misses of the worst
CPU seen. The recall target (95%) was met on the machine of 2026-12-02 (70 / 72, 97.2%) and
missed on the AMD EPYC of 2026-12-03 (68 / 72, 94.4%), until the still_improving slope's
error was pooled from the validation and training curves' residuals (detectors/fit.py):
69 / 72 (95.8%) there. The pair regained is still-improving-bn-cnn1d-mnist1d at seed 0, a
curve with one bump in its last half (tests/test_calibration.CPU_MARGINAL). The 3 misses
left are diverging-cnn-sgd-high-lr-digits at seed 1 (borderline in docs/calibration.md) and
two still-improving runs. Asserting 95% would leave no pair of slack on that CPU, so it is
reported, not asserted.
"""

from __future__ import annotations

from cases import CASES, run_case_once
from cases.sweep import summary, sweep

SEEDS = (0, 1, 2)


def test_the_held_out_half_at_three_seeds() -> None:
    # cases with a named detector defect (Case.defect) are counted by the sweep, not here
    held_out = [c for c in CASES if c.held_out and not c.defect]
    # seed 0 is shared with tests/test_calibration.py's runs when both run in one session
    figures = summary(sweep(held_out, SEEDS, run=run_case_once))
    print(figures)
    assert figures["pairs"] == 3 * len(held_out) and figures["crashes"] == 0
    assert figures["off_label"] <= 0.05 * figures["pairs"], figures  # target: <= 5%
    assert figures["found"] >= figures["expected"] - 4, figures  # 2-3 missed, by CPU
    assert figures["healthy_warned"] == 0, figures  # the target, met since 2026-12-02

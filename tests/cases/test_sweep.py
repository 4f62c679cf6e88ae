"""The calibration sweep: families and their split, crashes recorded, the summary figures."""

from __future__ import annotations

from cases import CASES, HELD_OUT_FAMILIES, Case, CaseResult, run_case
from cases.sweep import halves, summary, sweep
from deepdoctor.experiment import Experiment
from deepdoctor.findings import KINDS


def broken_build() -> Experiment:
    raise ValueError("no data here")


BROKEN = Case("crashes-at-build", broken_build, "digits/mlp", frozenset({"dead_units"}))


def test_every_family_is_a_data_set_and_an_architecture() -> None:
    for c in CASES:
        data, architecture = c.family.split("/")
        assert data in {
            *("digits", "mnist1d", "teacher", "spirals"),
            *("noisy-teacher", "overlap", "regression", "tokens"),  # tests/cases/synthetic.py
        }, c.name
        assert architecture in {
            *("mlp", "cnn", "transformer", "rnn"),
            *("linear", "functional", "resnet", "bert", "gpt2"),  # tests/cases/architectures.py
        }, c.name
    assert {c.family for c in CASES} >= HELD_OUT_FAMILIES


def test_each_half_has_half_the_cases_healthy_ones_and_every_kind() -> None:
    results = [CaseResult(c, frozenset(), frozenset()) for c in CASES]
    for half in ("tuning", "held-out"):
        cases = [r.case for r in halves(results)[half]]
        assert abs(len(cases) - len(CASES) / 2) <= 2, half
        assert sum(c.healthy for c in cases) >= 4, half
        assert set().union(*(c.expected for c in cases)) == set(KINDS), half


def test_a_crash_is_recorded_not_raised() -> None:
    result = run_case(BROKEN, seed=3)
    assert result.crashed is not None and result.crashed.startswith("ValueError: no data here")
    assert result.seed == 3 and not result.ok
    assert result.missed == {"dead_units"}


def test_sweep_runs_every_case_at_every_seed() -> None:
    linear = next(c for c in CASES if c.name == "underfitting-linear-spirals")
    results = sweep([linear, BROKEN], [0, 1])
    assert [(r.case.name, r.seed) for r in results] == [
        (linear.name, 0),
        (linear.name, 1),
        (BROKEN.name, 0),
        (BROKEN.name, 1),
    ]
    assert [r.crashed is None for r in results] == [True, True, False, False]
    assert summary(results)["crashes"] == 2


def test_summary_counts_pairs_once() -> None:
    healthy = next(c for c in CASES if c.healthy)
    vanishing = next(c for c in CASES if c.name == "vanishing-sigmoid-mlp50-digits")
    results = [
        # found 2 of 3 expected, and two kinds outside its labels: one pair off label
        CaseResult(
            vanishing,
            frozenset({"vanishing_gradients", "stalled_loss", "dead_units", "nonfinite"}),
            frozenset(),
        ),
        CaseResult(vanishing, frozenset(vanishing.expected), frozenset()),
        CaseResult(healthy, frozenset({"still_improving"}), frozenset()),
        CaseResult(healthy, frozenset(), frozenset({"overfitting"})),
    ]
    assert summary(results) == {
        "pairs": 4,
        "right": 2,
        "expected": 6,
        "found": 5,
        "recall": 5 / 6,
        "healthy": 2,
        "healthy_warned": 1,
        "off_label": 2,
        "crashes": 0,
    }

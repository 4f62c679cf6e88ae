"""Each detector on a hand-built Trace: the rule fires on the numbers it should, with those
numbers and its threshold in the evidence, and stays silent when its inputs are missing."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import deepdoctor as dd
from deepdoctor.detectors import activations, data, fit, gradients, loss
from deepdoctor.findings import KINDS, REMEDIES, Finding
from deepdoctor.trace import RunFacts, Trace


def make_trace(
    relative: list[float] | None = None,
    types: list[str] | None = None,
    losses: list[float] | None = None,
    steps: int = 50,
    facts: dict | None = None,
) -> Trace:
    """A trace whose layers have constant relative gradients ``relative`` (weight norm 1);
    ``facts`` the fields of its ``RunFacts``."""
    relative = relative or [0.1, 0.1, 0.1, 0.1]
    types = types or ["Linear"] * len(relative)
    names = [f"l{i}" for i in range(len(relative))]
    trace = Trace(names, dict(zip(names, types, strict=True)), facts=RunFacts(**(facts or {})))
    losses = losses if losses is not None else [2.3 * math.exp(-s / 10) + 0.1 for s in range(steps)]
    for s, value in enumerate(losses):
        trace.steps.append(
            s,
            {
                "loss": [value],
                "lr": [0.1],
                "grad_norm_total": [1.0],
                "nonfinite_loss": [float(not math.isfinite(value))],
                "nonfinite_grad": [0.0],
                "nonfinite_weight": [0.0],
            },
        )
        trace.layer.append(
            s,
            {
                "grad_norm_weight": list(relative),
                "grad_norm_bias": [math.nan] * len(relative),
                "weight_norm": [1.0] * len(relative),
            },
        )
    return trace


def kinds(findings: list[dd.Finding]) -> dict[str, str]:
    return {f.kind: f.severity for f in findings}


def test_detect_on_an_empty_trace_finds_nothing() -> None:
    assert dd.detect(Trace(["fc"], {"fc": "Linear"})) == []


def test_detect_rejects_what_is_not_a_trace() -> None:
    with pytest.raises(TypeError, match="probe.trace"):
        dd.detect({"loss": [1.0]})  # type: ignore[arg-type]


def test_a_healthy_trace_gives_no_finding() -> None:
    # a loss that settles on its floor in the first half of the run (the default curve, at a
    # time constant of 10 of its 50 steps, still halves over the second half: still falling)
    settled = [2.3 * math.exp(-s / 3) + 0.1 for s in range(50)]
    trace = make_trace(
        [0.05, 0.06, 0.05, 0.2], losses=settled, facts={"n_classes": 10, "task": "classification"}
    )
    assert dd.detect(trace) == []


def test_vanishing_gradients_are_named_with_the_ratio_and_slow_layers() -> None:
    # Relative gradient falls 10x per layer towards the input: 8 layers, first quarter
    # (l0, l1) median 10^-6.5, last quarter (l6, l7) median 10^-0.5 -> ratio 10^6.
    rel = [10.0 ** -(7 - i) for i in range(8)]
    findings = gradients.detect(make_trace(rel))
    (f,) = findings
    assert f.kind == "vanishing_gradients" and f.severity == "warning"
    assert f.evidence["last_over_first"] == pytest.approx(1e6, rel=1e-6)
    assert f.evidence["threshold"] == gradients.VANISH_RATIO_INIT  # seen at the first step
    assert f.layers == ["l0", "l1", "l2", "l3", "l4"]  # 100x or more below the last quarter
    assert f.remedies[0] in REMEDIES


def test_gradients_that_underflow_to_zero_in_all_but_the_last_layers_vanish() -> None:
    # A 1,000-layer sigmoid MLP: only the last few layers get a gradient that is not exactly
    # 0, so both the first and the last quarter's medians are 0; the output layer decides.
    rel = [0.0] * 36 + [1e-6, 1e-4, 1e-2, 0.3]
    (f,) = gradients.detect(make_trace(rel))
    assert f.kind == "vanishing_gradients" and f.evidence["last_over_first"] == math.inf
    assert len(f.layers) == 38 and f.layers[-1] == "l37"  # 100x or more below the top
    # ... while a net whose layers all get exactly 0 says nothing about depth
    assert gradients.detect(make_trace([0.0] * 8)) == []


def test_vanishing_at_initialisation_that_catches_up_within_the_run_is_a_note() -> None:
    # a transformer's query / key projections: 10^4x behind at step 0, level from step 1 on
    trace = make_trace([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], steps=40)
    for j in (0, 1):
        trace.layer.set_value("grad_norm_weight", 0, j, 1e-4)
    (f,) = gradients.detect(trace)
    assert f.kind == "vanishing_gradients" and f.severity == "info"
    assert f.evidence["last_over_first"] == pytest.approx(1e4) and f.evidence["caught_up"]
    # the same step 0 alone (a checkup) cannot see the catch-up: a warning
    (f,) = gradients.detect(make_trace([1e-4, 1e-4, 1, 1, 1, 1, 1, 1], steps=1))
    assert f.kind == "vanishing_gradients" and f.severity == "warning"


def test_norm_layers_and_embeddings_do_not_count_as_depth() -> None:
    # Huge relative gradients in LayerNorm / Embedding must not make a flat profile vanish.
    rel = [0.1, 1e-6, 0.1, 1e-6, 0.1, 0.1]
    types = ["Linear", "LayerNorm", "Conv2d", "Embedding", "LSTM", "Linear"]
    assert gradients.detect(make_trace(rel, types)) == []


def test_exploding_gradients_grow_towards_the_input() -> None:
    rel = [10.0, 3.0, 1.0, 0.3, 0.1, 0.1, 0.05, 0.05]
    (f,) = gradients.detect(make_trace(rel))
    assert f.kind == "exploding_gradients"
    # first quarter median 6.5, last quarter median 0.05
    assert f.evidence["first_over_last"] == pytest.approx(130.0)
    assert "l0" in f.layers


def test_a_gradient_cliff_is_exploding() -> None:
    trace = make_trace([0.1, 0.1, 0.1, 0.1])
    trace.steps.set_value("grad_norm_total", 30, 0, 500.0)
    (f,) = gradients.detect(trace)
    assert f.kind == "exploding_gradients"
    assert f.evidence == {"jump": 500.0, "threshold": gradients.EXPLODE_JUMP, "step": 30}


def test_nonfinite_reads_first_step_and_module_from_the_facts() -> None:
    trace = make_trace(
        losses=[2.3, 2.2, math.nan],
        facts={
            "nonfinite_at": {"step": 2, "first_nonfinite_module": "log", "nonfinite_weights": []}
        },
    )
    f = next(f for f in dd.detect(trace) if f.kind == "nonfinite")
    assert f.severity == "critical"
    assert f.evidence["step"] == 2 and f.evidence["first_module"] == "log"
    assert f.layers == ["log"] and "step 2" in f.summary


def test_nonfinite_without_facts_uses_the_step_flags() -> None:
    trace = make_trace(steps=20)
    trace.steps.set_value("nonfinite_grad", 7, 0, 1.0)
    trace.layer.set_value("grad_norm_weight", 7, 2, math.inf)
    f = next(f for f in loss.detect(trace) if f.kind == "nonfinite")
    assert f.evidence["step"] == 7 and f.evidence["nonfinite"] == ["grad"]
    assert f.layers == ["l2"]


def test_a_blown_up_loss_is_critical_divergence() -> None:
    losses = [2.0, 2.1, 2.0, 5.0, 60.0]
    f = next(f for f in loss.detect(make_trace(losses=losses)) if f.kind == "diverging_loss")
    assert f.severity == "critical"
    assert f.evidence["ratio"] == pytest.approx(30.0) and f.evidence["step"] == 4


def test_a_loss_that_climbs_back_is_diverging() -> None:
    losses = [2.3 - 0.04 * s for s in range(25)] + [1.3 + 0.1 * s for s in range(25)]
    f = next(f for f in loss.detect(make_trace(losses=losses)) if f.kind == "diverging_loss")
    assert f.severity == "warning"
    assert f.evidence["end_loss"] > loss.DIVERGE_FROM_MIN * f.evidence["min_loss"]


def _train_evals(trace: Trace, train: list[float]) -> Trace:
    return _with_evals(trace, train, train)


def test_without_evaluations_a_swinging_loss_is_only_noted() -> None:
    """Per step, batch noise and oscillation look alike: info, not a warning."""
    swinging = [1.0 + (0.8 if s % 2 else -0.8) * (s > 5) for s in range(60)]
    assert kinds(loss.detect(make_trace(losses=swinging)))["oscillating_loss"] == "info"
    rng = np.random.default_rng(0)
    noisy = [2.3 * math.exp(-s / 15) + 0.3 + 0.05 * rng.standard_normal() for s in range(60)]
    assert "oscillating_loss" not in kinds(loss.detect(make_trace(losses=noisy)))


def test_oscillation_is_judged_on_the_noise_free_curve() -> None:
    # the per-step loss swings by 0.8 either way (batch noise), the fixed-subset curve falls
    swinging = [1.0 + (0.8 if s % 2 else -0.8) * (s > 5) for s in range(60)]
    falling = _train_evals(make_trace(losses=swinging), [1.0, 0.8, 0.7, 0.6, 0.55, 0.5])
    assert "oscillating_loss" not in kinds(loss.detect(falling))
    # the fixed-subset curve rises by 0.2 three times: 0.6 of the starting (per-step) loss, 1.0
    bouncing = _train_evals(make_trace(losses=swinging), [0.2, 0.4, 0.25, 0.45, 0.2, 0.4, 0.2])
    (f,) = [f for f in loss.detect(bouncing) if f.kind == "oscillating_loss"]
    assert f.severity == "warning" and f.evidence["threshold"] == loss.OSCILLATION_UP
    assert f.evidence["up_travel"] == pytest.approx(0.6)
    # a one-way climb is not an oscillation (the diverging rule judges it)
    climbing = _train_evals(make_trace(losses=swinging), [0.2, 0.3, 0.4, 0.5, 0.6])
    assert "oscillating_loss" not in kinds(loss.detect(climbing))


def test_a_flat_loss_is_stalled() -> None:
    f = next(f for f in loss.detect(make_trace(losses=[2.3] * 40)) if f.kind == "stalled_loss")
    assert f.evidence["relative_drop"] == 0.0 and f.evidence["threshold"] == loss.STALL_DROP


def test_bad_init_loss_compares_step_zero_with_ln_classes() -> None:
    trace = make_trace(
        losses=[10.0] + [2.0] * 30, facts={"n_classes": 10, "task": "classification"}
    )
    f = next(f for f in loss.detect(trace) if f.kind == "bad_init_loss")
    assert f.severity == "warning"
    assert f.evidence["ratio"] == pytest.approx(10.0 / math.log(10), rel=1e-2)
    assert f.evidence["expected_loss"] == pytest.approx(math.log(10), rel=1e-2)


def test_bad_init_loss_needs_the_number_of_classes() -> None:
    assert "bad_init_loss" not in kinds(loss.detect(make_trace(losses=[10.0] + [2.0] * 30)))


def test_without_a_recorded_loss_there_is_no_loss_finding() -> None:
    trace = make_trace(losses=[math.nan] * 30)
    trace.steps.set_stat("nonfinite_loss", [[0.0]] * 30)  # NaN here means "not recorded"
    assert loss.detect(trace) == []


def _with_inputs(trace: Trace, mean: float, std: float, offset: float) -> Trace:
    for s in (0, 16, 32):
        trace.inputs.append(
            s,
            {
                "mean": [mean],
                "std": [std],
                "feature_mean_absmax": [offset],
                "feature_std_max": [std * 1.5],
                "feature_std_min": [0.0],
            },
        )
    return trace


def test_unscaled_inputs_from_the_input_table() -> None:
    (f,) = data.detect(_with_inputs(make_trace(), mean=4.0, std=6.0, offset=12.0))
    assert f.kind == "unscaled_inputs"
    assert f.evidence["rms"] == pytest.approx(math.sqrt(16 + 36), rel=1e-3)
    assert data.detect(_with_inputs(make_trace(), mean=0.0, std=1.0, offset=0.3)) == []


def test_class_imbalance_from_the_class_counts() -> None:
    (f,) = data.detect(make_trace(facts={"class_counts": [400, 100, 20]}))
    assert f.kind == "class_imbalance" and f.severity == "warning"
    assert f.evidence["max_over_min"] == 20.0 and f.evidence["rare_classes"] == [1, 2]
    (mild,) = data.detect(make_trace(facts={"class_counts": [400, 100]}))
    assert mild.severity == "info"


def _with_acts(trace: Trace, kind: str, stat: str, values: list[float]) -> Trace:
    trace.act_layers, trace.act_kinds = ["act1"], {"act1": kind}
    trace.acts.names = ["act1"]
    for i, v in enumerate(values):
        row = {s: [math.nan] for s in trace.acts.stats}
        row[stat] = [v]
        trace.acts.append(16 * i, row)
    return trace


def test_dead_units_over_the_second_half_of_the_run() -> None:
    (f,) = activations.detect(_with_acts(make_trace(), "relu", "dead_frac", [0.1, 0.7, 0.8, 0.9]))
    assert f.kind == "dead_units" and f.severity == "warning"
    assert f.evidence["dead_frac"] == pytest.approx(0.85) and f.layers == ["act1"]


def test_saturation_from_the_start_is_a_warning_and_learned_saturation_is_not() -> None:
    early = _with_acts(make_trace(), "tanh", "saturated_frac", [0.9, 0.9, 0.9, 0.9])
    assert kinds(activations.detect(early)) == {"saturated_units": "warning"}
    # The loss fell from 2.4 to 0.1 and units saturated only later: confident, not stuck.
    late = _with_acts(make_trace(), "tanh", "saturated_frac", [0.0, 0.1, 0.1, 0.7, 0.8, 0.8])
    assert kinds(activations.detect(late)) == {"saturated_units": "info"}


def test_a_third_of_the_units_saturated_from_the_start_warns_only_when_the_loss_is_stuck() -> None:
    third = [0.35, 0.35, 0.35, 0.35]
    stuck = make_trace(losses=[2.3 - 0.001 * s for s in range(50)])  # fell by 2%
    (f,) = activations.detect(_with_acts(stuck, "sigmoid", "saturated_frac", third))
    assert f.severity == "warning" and f.evidence["threshold"] == activations.SATURATED_STUCK_FRAC
    # the default curve falls from 2.4 to 0.1: the net learns in spite of them
    assert activations.detect(_with_acts(make_trace(), "sigmoid", "saturated_frac", third)) == []


def _with_evals(trace: Trace, train: list[float], val: list[float]) -> Trace:
    for i, (t, v) in enumerate(zip(train, val, strict=True)):
        trace.evals.append(10 * (i + 1), {"train_loss": [t], "val_loss": [v]})
    return trace


def test_overfitting_when_validation_rises_as_training_falls() -> None:
    trace = _with_evals(make_trace(), [1.0, 0.6, 0.3, 0.1, 0.05], [1.0, 0.7, 0.6, 0.8, 0.9])
    f = next(f for f in fit.detect(trace) if f.kind == "overfitting")
    assert f.evidence["val_loss_rise"] == pytest.approx(0.5) and f.evidence["best_step"] == 30


def test_still_improving_extrapolates_the_last_half_as_a_power_law() -> None:
    # loss = 4 / sqrt(step) at steps 10..100: a straight line of slope -0.5 in log-log, so
    # twice the steps would cut it by 1 - 2**-0.5 = 29%
    curve = [4.0 / math.sqrt(10 * (i + 1)) for i in range(10)]
    (f,) = fit.detect(_with_evals(make_trace(), curve, curve))
    assert f.kind == "still_improving" and f.severity == "warning"
    assert f.evidence["slope"] == pytest.approx(-0.5)
    assert f.evidence["predicted_gain_if_doubled"] == pytest.approx(1 - 2**-0.5, abs=1e-3)
    assert f.evidence["points"] == 5  # the last half of ten evaluations


def test_a_fall_within_the_curves_own_noise_is_not_still_improving() -> None:
    # falls, then jitters between 0.45 and 0.75: its last half's trend predicts a cut, but
    # less than three standard errors of the jitter below flat
    jitter = [2.0, 1.0, 0.6, 0.5, 0.68, 0.45, 0.66, 0.75, 0.72, 0.6, 0.45]
    trace = _with_evals(make_trace(), jitter, jitter)
    assert "still_improving" not in {f.kind for f in fit.detect(trace)}
    # the same level of fall on a smooth curve is
    smooth = [2.0, 1.7, 1.45, 1.25, 1.08, 0.94, 0.82, 0.72, 0.63, 0.55, 0.48]
    (f,) = fit.detect(_with_evals(make_trace(), smooth, smooth))
    assert f.kind == "still_improving"
    assert f.evidence["curve_noise"] < 0.05 and f.evidence["noise_sigmas"] > 3.0


def test_one_jittery_validation_point_is_weighed_against_both_curves_noise() -> None:
    # validation and training losses fall as step^-0.5 (the training loss with a 1% jitter);
    # the ninth validation point sits 14% above the line. From the validation line's own
    # five residuals the slope stands 2.5 errors below flat, short of 3; with the noise pooled
    # from both lines' residuals (6 degrees of freedom) it stands 3.5
    train = [1.2776, 0.8855, 0.7376, 0.6261, 0.5713, 0.5112, 0.4829, 0.4427, 0.4259, 0.396]
    val = [1.3914, 0.9839, 0.8033, 0.6957, 0.6223, 0.568, 0.5259, 0.4919, 0.5287, 0.44]
    steps = np.arange(10, 101, 10, dtype=float)
    own = fit.power_trend(steps, np.array(val))
    assert own is not None and 2.4 < own.sigmas < 2.6
    (f,) = fit.detect(_with_evals(make_trace(), train, val))
    assert f.kind == "still_improving" and f.severity == "warning"
    assert f.evidence["noise_sigmas"] == pytest.approx(3.49, abs=0.01)
    # the same jitter in the training curve as well: the curves are that noisy, and the
    # pooled error (2.35 errors) says so
    jittery = train[:8] + [0.4856, 0.396]
    found = fit.detect(_with_evals(make_trace(), jittery, val))
    assert "still_improving" not in {f.kind for f in found}


def test_a_falling_validation_loss_beside_a_flat_training_loss_is_not_still_improving() -> None:
    # the validation loss falls like a power law while the training loss stays level: the
    # model is not fitting its data any better, so more steps would not keep the fall going
    val = [4.0 / math.sqrt(10 * (i + 1)) for i in range(10)]
    flat = [0.5 + 0.001 * (i % 2) for i in range(10)]
    found = fit.detect(_with_evals(make_trace(), flat, val))
    assert "still_improving" not in {f.kind for f in found}


def test_still_improving_from_the_per_step_loss_without_evaluations() -> None:
    # no evaluations: the per-step loss, read as block medians, falling as step^-0.5 with
    # mini-batch noise of 5%
    rng = np.random.default_rng(0)
    losses = [4.0 / math.sqrt(s) * (1 + 0.05 * rng.standard_normal()) for s in range(1, 201)]
    (f,) = fit.detect(make_trace(losses=losses, steps=200))
    assert f.kind == "still_improving" and f.evidence["curve"] == "train_loss (per step)"
    assert f.evidence["slope"] == pytest.approx(-0.5, abs=0.1)


def test_underfitting_is_a_poor_plateau() -> None:
    trace = _with_evals(
        make_trace(facts={"n_classes": 4, "task": "classification"}),
        [1.38, 1.2, 1.1, 1.1, 1.1],
        [1.38, 1.2, 1.1, 1.1, 1.1],
    )
    (f,) = fit.detect(trace)
    assert f.kind == "underfitting"
    assert f.evidence["fraction"] == pytest.approx(1.1 / math.log(4), rel=1e-2)


def test_every_finding_uses_the_contract_vocabulary() -> None:
    trace = _with_evals(
        make_trace(
            [10.0 ** -(7 - i) for i in range(8)],
            losses=[10.0] * 40,
            facts={"n_classes": 3, "class_counts": [100, 1, 1]},
        ),
        [1.0, 0.6, 0.3, 0.1, 0.05],
        [1.0, 0.7, 0.6, 0.8, 0.9],
    )
    findings = dd.detect(trace)
    assert len(findings) >= 4
    for f in findings:
        assert f.kind in KINDS and set(f.remedies) <= set(REMEDIES) and f.remedies
        assert f.summary.endswith(".") and any("threshold" in k for k in f.evidence)


# -- root cause before symptoms (detectors.causes) ------------------------------------------


def _exploding_in_depth(**facts: object) -> Trace:
    # relative gradients 1000x larger at the input than at the output, over 40 steps
    return make_trace([10.0, 1.0, 0.1, 0.01], steps=40, facts=dict(facts))


def _add_inputs(trace: Trace, mean: float, std: float) -> None:
    for step in (0, 16, 32):
        trace.inputs.append(
            step,
            {
                "mean": [mean],
                "std": [std],
                "feature_mean_absmax": [abs(mean)],
                "feature_std_max": [std],
                "feature_std_min": [std],
            },
        )


def test_exploding_gradients_from_large_inputs_are_folded_under_unscaled_inputs() -> None:
    trace = _exploding_in_depth()
    _add_inputs(trace, mean=800.0, std=400.0)  # inputs scaled x1000
    by_kind = {f.kind: f for f in dd.detect(trace)}
    assert by_kind["exploding_gradients"].caused_by == "unscaled_inputs"
    assert by_kind["exploding_gradients"].severity == "info"
    assert by_kind["unscaled_inputs"].is_problem
    assert by_kind["unscaled_inputs"].evidence["explains"] == ["exploding_gradients"]


def test_tiny_inputs_do_not_explain_exploding_gradients() -> None:
    trace = _exploding_in_depth()
    _add_inputs(trace, mean=0.0, std=0.001)
    by_kind = {f.kind: f for f in dd.detect(trace)}
    assert by_kind["unscaled_inputs"].is_problem
    assert by_kind["exploding_gradients"].is_problem
    assert by_kind["exploding_gradients"].caused_by is None


def test_a_scaled_up_output_layer_explains_the_gradients_growing_in_depth() -> None:
    # an output layer scaled x1000: its own relative gradient 1000x below the level others
    trace = make_trace(
        [1.0, 1.0, 1.0, 1.0, 1e-3], steps=40, facts={"n_classes": 10, "task": "classification"}
    )
    trace.steps.set_value("loss", 0, 0, 30.0)  # 13x ln(10): confidently wrong at init
    by_kind = {f.kind: f for f in dd.detect(trace)}
    assert by_kind["bad_init_loss"].is_problem
    assert by_kind["exploding_gradients"].evidence["first_over_last"] == 1000.0
    assert by_kind["exploding_gradients"].caused_by == "bad_init_loss"
    assert not by_kind["exploding_gradients"].is_problem


def test_gradients_growing_through_every_layer_are_a_fault_beside_a_bad_init_loss() -> None:
    # a chaotic init: the growth runs through the layers before the output too, which an
    # outsized output layer does not explain
    trace = _exploding_in_depth(n_classes=10, task="classification")
    trace.steps.set_value("loss", 0, 0, 30.0)
    by_kind = {f.kind: f for f in dd.detect(trace)}
    assert by_kind["bad_init_loss"].is_problem
    assert by_kind["exploding_gradients"].evidence["first_over_last_before_output"] == 100.0
    assert by_kind["exploding_gradients"].is_problem
    assert by_kind["exploding_gradients"].caused_by is None


def test_a_gradient_jump_in_time_is_not_explained_by_a_bad_init_loss() -> None:
    trace = make_trace(steps=40, facts={"n_classes": 10, "task": "classification"})
    trace.steps.set_value("loss", 0, 0, 30.0)
    trace.steps.set_value("grad_norm_total", 30, 0, 500.0)
    by_kind = {f.kind: f for f in dd.detect(trace)}
    assert (
        by_kind["exploding_gradients"].is_problem
        and "jump" in by_kind["exploding_gradients"].evidence
    )
    assert by_kind["exploding_gradients"].caused_by is None


def test_a_nan_that_ends_an_earlier_blow_up_is_folded_under_diverging_loss() -> None:
    from deepdoctor.detectors.causes import fold_consequences

    def pair(nan_step: int, blowup_step: int) -> dict[str, Finding]:
        nan = Finding("nonfinite", "critical", "NaN", evidence={"step": nan_step})
        blowup = Finding("diverging_loss", "critical", "up", evidence={"step": blowup_step})
        return {f.kind: f for f in fold_consequences([nan, blowup])}

    folded = pair(nan_step=12, blowup_step=9)
    assert folded["nonfinite"].caused_by == "diverging_loss"
    assert folded["nonfinite"].severity == "info"
    assert folded["diverging_loss"].evidence["explains"] == ["nonfinite"]
    # a NaN at the step the loss peaked, or before, is its own problem
    assert pair(nan_step=9, blowup_step=9)["nonfinite"].caused_by is None
    assert pair(nan_step=3, blowup_step=9)["nonfinite"].is_problem


def test_every_row_of_the_causes_table_names_real_kinds() -> None:
    from deepdoctor.detectors import CAUSES
    from deepdoctor.findings import KINDS

    assert CAUSES and all(c in KINDS and r in KINDS for c, r, _ in CAUSES)


def test_nanmedian_matches_numpy_on_random_arrays_with_nan_and_inf() -> None:
    from deepdoctor.detectors._common import nanmedian

    rng = np.random.default_rng(0)
    for _ in range(300):
        shape = tuple(int(n) for n in rng.integers(0, 6, size=rng.integers(1, 3)))
        a = rng.normal(size=shape)
        a[rng.random(shape) < 0.3] = np.nan
        a[rng.random(shape) < 0.05] = np.inf
        for axis in [None, *range(a.ndim)]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                expected = np.nanmedian(a, axis=axis)
            np.testing.assert_allclose(nanmedian(a, axis=axis), expected, equal_nan=True)


def test_a_loss_that_jumps_tenfold_and_comes_back_has_diverged() -> None:
    """A logistic regression at SGD lr 100: 0.68, then 1.95, 10.3, then swinging."""
    rng = np.random.default_rng(0)
    losses = [0.68, 1.95, 10.3] + [float(v) for v in rng.uniform(0.0, 10.0, 40)]
    f = next(f for f in loss.detect(make_trace(losses=losses)) if f.kind == "diverging_loss")
    assert f.severity == "critical" and f.evidence["threshold"] == loss.DIVERGE_PEAK
    assert f.evidence["start_loss"] == 0.68
    # a healthy start noisy by 2x is not a blow-up
    healthy = [2.3, 4.0, 2.2] + [2.3 * math.exp(-s / 10) + 0.1 for s in range(40)]
    assert "diverging_loss" not in kinds(loss.detect(make_trace(losses=healthy)))

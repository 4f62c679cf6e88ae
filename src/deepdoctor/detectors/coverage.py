"""coverage: what a Trace gave the detectors to read, and what they could not judge.

``detect`` says what it found; ``coverage`` says what it saw. A detector whose inputs are
missing or too short stays silent rather than guess, and silence must not read as health:
``cannot_judge`` lists each such family or kind with the reason in words, and
``nothing_judged`` the reasons when nothing at all could be judged (no steps; or neither a
loss nor a gradient). The minimums are the detectors' own constants, imported, so the two
never disagree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..findings import KINDS
from ..pretrained import DRIFT_STEPS
from ..stats import DYING_ACTIVATIONS, SATURATING_BOUNDS
from ..trace import Trace
from ._common import eval_series, stopped_early, weight_layers
from .data import MIN_PER_CLASS, input_scale
from .fit import MIN_CURVE_POINTS, MIN_VAL_EVALS
from .gradients import MIN_WEIGHT_LAYERS, relative_gradients
from .loss import MIN_STEPS, reference_loss

NO_STEPS = "no steps were recorded (a step ends at optimizer.step() inside `with Probe(model)`)"
NO_LOSS = "no loss was recorded (call probe.record_loss(loss) each step)"
NO_GRADIENT = "no gradient was recorded (call loss.backward() before optimizer.step())"
GRADIENT_KINDS = ("vanishing_gradients", "exploding_gradients")
ACTIVATION_KINDS = ("dead_units", "saturated_units")
LOSS_CURVE_KINDS = ("diverging_loss", "oscillating_loss", "stalled_loss")
END_KINDS = ("still_improving", "underfitting")


def coverage(trace: Trace) -> dict[str, Any]:
    """What ``trace`` holds for the detectors, JSON-ready.

    ``steps`` recorded; ``layers`` and ``weight_layers`` watched; ``activations``: the
    activation columns by family (``relu``, ``sigmoid`` ...), of which
    ``functional_activations`` were applied as functions (columns ``<layer>.input``, measured
    from what the next layer receives); ``activation_samples``: sampled steps of activation
    statistics; ``loss_recorded`` and ``finite_loss_steps``; ``gradient_steps``: steps with
    a finite gradient norm; ``evaluations``; ``facts``: the task, classes and class counts
    known; ``cannot_judge``: ``{what, kinds, reason}`` for each family or kind that had
    nothing to read; ``nothing_judged``: why nothing could be judged (empty when something
    could).

    >>> import deepdoctor as dd
    >>> coverage(dd.Trace(["fc"], {"fc": "Linear"}))["nothing_judged"]  # doctest: +ELLIPSIS
    ['no steps were recorded ...']
    """
    loss = trace.loss()
    loss_recorded = bool((~np.isnan(loss) | _flagged(trace, "loss")).any())
    grads = np.concatenate(
        [trace.layer.array("grad_norm_weight"), trace.layer.array("grad_norm_bias")], axis=1
    )
    grad_recorded = bool((~np.isnan(grads)).any() or _flagged(trace, "grad").any())
    finite_loss_steps = int(np.isfinite(loss).sum())
    facts = trace.facts
    out: dict[str, Any] = {
        "steps": trace.n_steps,
        "layers": len(trace.layers),
        "weight_layers": len(weight_layers(trace)),
        "activations": dict(Counter(trace.act_kinds.get(a, "unknown") for a in trace.act_layers)),
        "functional_activations": sum(a.endswith(".input") for a in trace.act_layers),
        "activation_samples": len(trace.acts),
        "loss_recorded": loss_recorded,
        "finite_loss_steps": finite_loss_steps,
        "gradient_steps": int(np.isfinite(grads).any(axis=1).sum()),
        "evaluations": len(trace.evals),
        "facts": {
            "task": facts.task,
            "n_classes": facts.n_classes,
            "class_counts": list(facts.class_counts) if facts.class_counts else None,
        },
    }
    if trace.n_steps == 0:
        out["cannot_judge"] = [_entry("everything", list(KINDS), NO_STEPS)]
        out["nothing_judged"] = [NO_STEPS]
        return out
    out["cannot_judge"] = (
        _gradients(trace, grad_recorded, grads)
        + _activations(trace)
        + _loss(trace, loss_recorded, finite_loss_steps)
        + _data(trace)
        + _fit(trace, finite_loss_steps)
        + _fine_tuning(trace)
    )
    out["nothing_judged"] = [] if loss_recorded or grad_recorded else [NO_LOSS, NO_GRADIENT]
    return out


def _fine_tuning(trace: Trace) -> list[dict[str, Any]]:
    """Told which layers are pretrained, but without their drift: say why (untold, the kind
    is not listed: it needs the user's word, as data detectors need targets)."""
    facts = trace.facts
    if facts.pretrained_layers is None or facts.pretrained_drift is not None:
        return []
    if not set(facts.pretrained_layers) & set(trace.layers):
        reason = "every pretrained layer is frozen: their drift is not judged"
    else:
        reason = (
            f"the run ended before {DRIFT_STEPS} steps ({trace.n_steps}): the pretrained "
            "layers' drift is not judged"
        )
    return [_entry("fine-tuning", ["pretrained_drift"], reason)]


def _flagged(trace: Trace, what: str) -> np.ndarray:
    """Steps at which the Probe flagged the loss, gradient or weights as NaN or Inf."""
    return np.asarray(trace.steps.array(f"nonfinite_{what}")[:, 0] > 0)


def _entry(what: str, kinds: Sequence[str], reason: str) -> dict[str, Any]:
    return {"what": what, "kinds": list(kinds), "reason": reason}


def _gradients(trace: Trace, recorded: bool, grads: np.ndarray) -> list[dict[str, Any]]:
    n = len(weight_layers(trace))
    if n == 0:
        reason = "no weight layer (Linear, Conv ...) was watched: gradients are not judged"
    elif not recorded:
        reason = f"{NO_GRADIENT}: gradients are not judged"
    elif not np.isfinite(grads).any():
        reason = "every gradient is NaN or Inf: gradients are not judged"
    elif not np.isfinite(relative_gradients(trace)[1]).any():
        reason = "every weight norm is 0, NaN or Inf: gradients are not judged"
    elif n < MIN_WEIGHT_LAYERS:
        return [
            _entry(
                "gradients across depth",
                ["vanishing_gradients"],
                f"fewer than {MIN_WEIGHT_LAYERS} weight layers ({n}): gradients are not "
                "compared across depth",
            )
        ]
    else:
        return []
    return [_entry("gradients", GRADIENT_KINDS, reason)]


def _activations(trace: Trace) -> list[dict[str, Any]]:
    if not trace.act_layers:
        return [
            _entry(
                "activations",
                ACTIVATION_KINDS,
                "no activation could be identified (no activation module, and no layer "
                "received a ReLU, sigmoid or tanh output): dead and saturated units are not "
                "judged",
            )
        ]
    if len(trace.acts) == 0:
        every = f"; the Probe samples every {trace.facts.every} steps" if trace.facts.every else ""
        return [
            _entry(
                "activations",
                ACTIVATION_KINDS,
                f"no activation statistics were sampled{every}: dead and saturated units are "
                "not judged",
            )
        ]
    entries = []
    for kind, stat, families, units in (
        ("dead_units", "dead_frac", DYING_ACTIVATIONS, "dead"),
        ("saturated_units", "saturated_frac", SATURATING_BOUNDS, "saturated"),
    ):
        cols = [j for j, a in enumerate(trace.act_layers) if trace.act_kinds.get(a) in families]
        if cols and not np.isfinite(trace.acts.array(stat)[:, cols]).any():
            entries.append(
                _entry(
                    f"{units} units",
                    [kind],
                    f"every sample of the {'/'.join(sorted(families))} units is NaN: "
                    f"{units} units are not judged",
                )
            )
    return entries


def _loss(trace: Trace, recorded: bool, finite_steps: int) -> list[dict[str, Any]]:
    if not recorded:
        return [_entry("loss", [*LOSS_CURVE_KINDS, "bad_init_loss"], NO_LOSS)]
    if finite_steps == 0:
        return [
            _entry(
                "loss",
                [*LOSS_CURVE_KINDS, "bad_init_loss"],
                "every loss is NaN or Inf: the loss curve is not judged",
            )
        ]
    entries = []
    if finite_steps < MIN_STEPS:
        entries.append(
            _entry(
                "loss curve",
                LOSS_CURVE_KINDS,
                f"fewer than {MIN_STEPS} steps with a finite loss ({finite_steps}): the loss "
                "curve is not judged (only a blow-up is)",
            )
        )
    elif stopped_early(trace) and trace.facts.stop_reason != "early_stopping":
        entries.append(
            _entry(
                "stalled loss",
                ["stalled_loss"],
                f"the run stopped early ({trace.facts.stop_reason}): a stalled loss is not judged",
            )
        )
    first = trace.loss()[0]
    facts = trace.facts
    if not np.isfinite(first):
        why = "the first step's loss is not finite"
    elif facts.task == "regression":
        known = isinstance(facts.target_var, int | float) and facts.target_var > 0
        why = "" if known else "the targets' variance is unknown"
    else:
        known = reference_loss(trace) is not None
        why = "" if known else "the number of classes is unknown (pass targets= to record_loss)"
    if why:
        entries.append(
            _entry(
                "loss at initialisation",
                ["bad_init_loss"],
                f"{why}: the loss at initialisation is not judged",
            )
        )
    return entries


def _data(trace: Trace) -> list[dict[str, Any]]:
    entries = []
    if len(trace.inputs) == 0:
        entries.append(
            _entry(
                "input scale",
                ["unscaled_inputs"],
                "no input statistics were sampled (the first layer's input is not a "
                "floating-point tensor, or no sampled step ran a forward): the input scale is "
                "not judged",
            )
        )
    elif input_scale(trace) is None:
        entries.append(
            _entry(
                "input scale",
                ["unscaled_inputs"],
                "the input statistics are NaN: the input scale is not judged",
            )
        )
    counts = trace.facts.class_counts
    if trace.facts.task == "regression":
        return entries
    if not counts or len(counts) < 2:
        why = "the class counts are unknown (pass targets= to record_loss)"
    elif sum(counts) < MIN_PER_CLASS * len(counts):
        why = (
            f"fewer than {MIN_PER_CLASS} examples per class ({sum(counts)} over "
            f"{len(counts)} classes)"
        )
    else:
        return entries
    entries.append(
        _entry("class balance", ["class_imbalance"], f"{why}: class balance is not judged")
    )
    return entries


def _fit(trace: Trace, finite_steps: int) -> list[dict[str, Any]]:
    entries = []
    val = len(eval_series(trace, "val_loss")[1])
    if len(trace.evals) == 0 or val == 0:
        what = "no evaluations" if len(trace.evals) == 0 else "no validation loss"
        entries.append(_entry("overfitting", ["overfitting"], f"{what}: overfitting is not judged"))
    elif val < MIN_VAL_EVALS:
        entries.append(
            _entry(
                "overfitting",
                ["overfitting"],
                f"fewer than {MIN_VAL_EVALS} evaluations with a validation loss ({val}): "
                "overfitting is not judged",
            )
        )
    points = max(
        [finite_steps] + [len(eval_series(trace, s)[1]) for s in ("val_loss", "train_loss")]
    )
    if points < MIN_CURVE_POINTS:
        why = f"fewer than {MIN_CURVE_POINTS} points on any loss curve ({points})"
    elif stopped_early(trace):
        why = f"the run stopped early ({trace.facts.stop_reason})"
    else:
        return entries
    entries.append(
        _entry(
            "end of training",
            END_KINDS,
            f"{why}: whether training ended still improving or underfitting is not judged",
        )
    )
    return entries

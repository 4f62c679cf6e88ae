"""Verify the suite's labels by a measurement that does not use deepdoctor's training loop or
detectors: plain PyTorch, a reviewer can rerun it.

``python -m tests.cases.verify [--seeds 0 1 2] [--pattern P] [--kinds K ...] [--quiet]``
prints, per (case, seed, kind), what the measurement says against the case's labels, then a
count per kind and a markdown table of what disagrees (an ``expected`` kind measured absent, a
healthy case measured present) and of kinds measured present on a broken case that neither
expects nor allows them ("unlabelled": what the detectors' false alarms count, not a wrong
label). Every kind but still_improving is measured on every case; each measurement is a
function ``(case, seed) -> Verdict`` below with its present / absent thresholds as named
constants (a value between them is borderline and counted neither way). Nothing here imports
deepdoctor's detectors, stats, probe or training loop. About 160 s for all cases at seeds
0-2 on one core. stalled_loss is measured too (smoothed loss change); oscillating_loss and
underfitting are not.

still_improving: train the case's setup for its steps and for twice as many, from the same
seed and data order, and compare the validation loss at the end. Present when twice the
training lowers it by ``PRESENT_GAIN`` or more, absent at ``ABSENT_GAIN`` or less, borderline
between (a label in the borderline band is not counted either way). A healthy case must
measure absent; a case labelled still_improving must measure present.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from deepdoctor.experiment import Experiment

from . import CASES, Case

PRESENT_GAIN = 0.2  # twice the training cuts the validation loss by a fifth or more
ABSENT_GAIN = 0.05  # ... by a twentieth or less: the run had converged


END_POINTS = 5  # the end of a run: the median validation loss at 5 points of its last 20%


def plain_run(case: Case, steps: int, seed: int) -> float:
    """The validation loss at the end of ``steps`` plain-loop steps of the case's setup: the
    median of ``END_POINTS`` evaluations spread over the last fifth of the run, so that one
    spike of an Adam run does not decide the label."""
    exp = _seeded(case, seed)
    model = exp.build()
    make_opt = exp.optimizer or (lambda p: torch.optim.SGD(p, lr=0.1))
    opt = make_opt([p for p in model.parameters() if p.requires_grad])
    X, y = exp.train
    Xv, yv = exp.val
    loss_fn = exp.loss_fn or (nn.CrossEntropyLoss() if not y.is_floating_point() else nn.MSELoss())
    checkpoints = {steps - round(i * steps / (5 * END_POINTS)) for i in range(END_POINTS)}
    ends: list[float] = []
    model.train()
    for done, idx in enumerate(_batches(len(X), exp.batch_size, seed, steps), 1):
        loss = loss_fn(_fit(model(X[idx]), y[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if done in checkpoints:
            ends.append(_evaluate(model, loss_fn, Xv, yv))
    return float(torch.tensor(ends).median())


def _batches(n: int, batch_size: int, seed: int, steps: int) -> Iterator[torch.Tensor]:
    """The plain loop's data order: ``steps`` batches of indices, a fresh permutation from a
    generator seeded with ``seed`` each epoch, the last partial batch of an epoch dropped."""
    order = torch.Generator().manual_seed(seed)
    size = min(batch_size, n)
    done = 0
    while True:
        perm = torch.randperm(n, generator=order)
        for start in range(0, n - size + 1, size):
            if done == steps:
                return
            yield perm[start : start + size]
            done += 1


def _evaluate(model: nn.Module, loss_fn: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        value = float(loss_fn(_fit(model(X), y), y))
    model.train()
    return value


def _fit(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One output per example for float targets of one value each."""
    if target.is_floating_point() and out.dim() == target.dim() + 1 and out.shape[-1] == 1:
        return out.squeeze(-1)
    return out


@dataclass(frozen=True)
class Verdict:
    case: str
    seed: int
    kind: str
    measured: str  # present | absent | borderline | unmeasurable
    value: float
    labelled: str  # expected | allowed | healthy | other (a broken case's unlabelled kind)
    detail: str = ""

    @property
    def disagrees(self) -> bool:
        return (self.labelled == "expected" and self.measured == "absent") or (
            self.labelled == "healthy" and self.measured == "present"
        )

    @property
    def unlabelled(self) -> bool:
        """Present on a broken case that neither expects nor allows the kind: not a
        disagreement with a label, but what the detectors' "false alarm" counts."""
        return self.labelled == "other" and self.measured == "present"


def still_improving(case: Case, seed: int) -> Verdict:
    steps = case.build().steps
    short, long = plain_run(case, steps, seed), plain_run(case, 2 * steps, seed)
    gain = (short - long) / short if short > 0 and math.isfinite(short) else math.nan
    measured = (
        "unmeasurable"
        if not math.isfinite(gain)
        else "present"
        if gain >= PRESENT_GAIN
        else "absent"
        if gain <= ABSENT_GAIN
        else "borderline"
    )
    labelled = (
        "expected" if "still_improving" in case.expected else "healthy" if case.healthy else "other"
    )
    return Verdict(case.name, seed, "still_improving", measured, gain, labelled)


# -- every other kind a plain measurement can decide ------------------------------------------
#
# Each function below is ``(case, seed) -> Verdict``. It uses only torch on the case's own
# model builder, data, optimizer factory and loss: at initialisation (the model built from
# ``seed`` as diagnose builds it, the run's first batch in the same data order as ``plain_run``)
# or over one plain run of the case's steps (``plain_record``). The thresholds were set from
# the textbook reading of each kind before the suite was run, not fitted to its labels; a
# value between the present and the absent threshold is borderline and not counted.

# vanishing / exploding gradients, at init: relative gradient ||dW|| / ||W|| of every weight
# layer (Linear, Conv, RNN, MultiheadAttention, in forward order), the mean of the last
# quarter of layers over the mean of the first quarter (vanishing; its inverse for exploding).
RATIO_PRESENT = 1e3  # three orders of magnitude between the ends: the early layers do not learn
RATIO_ABSENT = 1e2  # two or fewer: the spread of any sound deep network at init
TINY_PRESENT = 1e-6  # ... or no layer's relative gradient above a millionth: nothing learns
TINY_ABSENT = 1e-4
# exploding, during the plain run: the total gradient norm against the first step's
GROWTH_PRESENT = 100.0  # a hundredfold jump: orders of magnitude
GROWTH_ABSENT = 10.0
# dead units: a ReLU unit (a feature, or a channel of a conv map) that outputs exactly zero for
# every one of PROBE_EXAMPLES training examples; the fraction of all ReLU units, at init or at
# the end of the plain run, whichever is larger
PROBE_EXAMPLES = 512
DEAD_PRESENT = 0.25  # a quarter of the units never fire
DEAD_ABSENT = 0.05  # a few dead units are normal in a trained ReLU net
# saturated units: sigmoid / tanh outputs within 1% of their bounds (sigmoid < 0.01 or > 0.99,
# |tanh| > 0.99) at init; the fraction of a layer's outputs over PROBE_EXAMPLES examples, the
# largest over layers
SATURATION_MARGIN = 0.01
SATURATED_PRESENT = 0.25  # a quarter of a layer's outputs in the flat tails
SATURATED_ABSENT = 0.05  # the tails of a unit-variance pre-activation hold ~1% (tanh) - 5%
# diverging loss, over the plain run's training-batch losses: peak over the first loss, and
# the end (median of the last window of SMOOTH steps) over the lowest window median
PEAK_PRESENT = 10.0  # the loss reached ten times its start: it blew up
PEAK_ABSENT = 3.0
RISE_PRESENT = 2.0  # the smoothed loss ended at twice its lowest: it climbed back
RISE_ABSENT = 1.25
RISE_FLOOR = 0.1  # the lowest window counts no lower than a tenth of the first: a doubling of a
# loss near zero (0.008 -> 0.06 in a fitted GRU) is noise, not divergence
# stalled loss: the smoothed loss's relative change from the first window to the last
STALL_PRESENT = 0.03  # moved by 3% or less over the whole run
STALL_ABSENT = 0.15
# unscaled inputs: per-feature mean and std of the training inputs (flattened features); the
# largest of max |mean|, max std and 1 / median std (over non-constant features)
SCALE_PRESENT = 5.0  # five times off zero mean / unit scale
SCALE_ABSENT = 2.5
# class imbalance: largest over smallest class count of the training targets
IMBALANCE_PRESENT = 5.0
IMBALANCE_ABSENT = 2.0
# bad init loss: cross-entropy at init over PROBE_EXAMPLES training examples over ln(classes)
INIT_LOSS_PRESENT = 2.0  # twice what an uninformed, calibrated start gives
INIT_LOSS_ABSENT = 1.25
# overfitting, over EVALS evaluations of the plain run (training loss on up to EVAL_TRAIN
# training examples, validation loss on the validation set; the end is the median of the last
# three): the validation loss's rise from its minimum while the training loss did not rise,
# and the gap between them
EVALS = 20
EVAL_TRAIN = 2048
VAL_RISE_PRESENT = 0.25  # the validation loss ended a quarter above its minimum
VAL_RISE_ABSENT = 0.05
GAP_PRESENT = 0.5  # ... or it ended half a nat above the training loss, and at twice it
GAP_ABSENT = 0.1  # absent needs both: rise <= 5% and gap <= 0.1 nat (or val <= 1.2x train)
TRAIN_FALL = 0.9  # present needs the training loss down a tenth from its first evaluation
# (and, for the rise, from where it stood at the validation minimum)

WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.RNNBase,
    nn.MultiheadAttention,
)
if "transformers" in sys.modules or importlib.util.find_spec("transformers") is not None:
    # GPT-2's projections are transformers' Conv1D (a Linear with its weight transposed)
    from transformers.pytorch_utils import Conv1D

    WEIGHT_LAYERS += (Conv1D,)
PROBLEM_KINDS = (
    "vanishing_gradients",
    "exploding_gradients",
    "dead_units",
    "saturated_units",
    "nonfinite",
    "diverging_loss",
    "stalled_loss",
    "unscaled_inputs",
    "class_imbalance",
    "bad_init_loss",
    "overfitting",
)


def _seeded(case: Case, seed: int) -> Experiment:
    """The case's Experiment at ``seed``: its model is drawn from that seed, as diagnose's
    (``Experiment.build`` reseeds torch with ``exp.seed``; a ``torch.manual_seed(seed)``
    before it was overridden, so every seed measured the seed-0 initialisation)."""
    exp = case.build()
    exp.seed = seed
    return exp


def _setup(case: Case, seed: int) -> tuple[Experiment, nn.Module, nn.Module]:
    exp = _seeded(case, seed)
    model = exp.build()
    X, y = exp.train
    loss_fn = exp.loss_fn or (nn.CrossEntropyLoss() if not y.is_floating_point() else nn.MSELoss())
    return exp, model, loss_fn


def _first_batch(exp: Experiment, seed: int) -> torch.Tensor:
    return next(_batches(len(exp.train[0]), exp.batch_size, seed, 1))


def _band(value: float, present: float, absent: float, high_is_present: bool = True) -> str:
    if not math.isfinite(value) and not math.isinf(value):
        return "unmeasurable"
    if high_is_present:
        return "present" if value >= present else "absent" if value <= absent else "borderline"
    return "present" if value <= present else "absent" if value >= absent else "borderline"


def _labelled(case: Case, kind: str) -> str:
    if kind in case.expected:
        return "expected"
    if kind in case.allowed:
        return "allowed"
    return "healthy" if case.healthy else "other"


def _verdict(case: Case, seed: int, kind: str, measured: str, value: float, detail: str) -> Verdict:
    return Verdict(case.name, seed, kind, measured, value, _labelled(case, kind), detail)


_INIT: dict[tuple[str, int], dict] = {}


def init_record(case: Case, seed: int) -> dict:
    """At initialisation: each weight layer's relative gradient on the first batch (forward
    order), the ReLU / sigmoid / tanh outputs and the loss on ``PROBE_EXAMPLES`` examples."""
    key = (case.name, seed)
    if key in _INIT:
        return _INIT[key]
    exp, model, loss_fn = _setup(case, seed)
    X, y = exp.train
    model.train()
    order: list[nn.Module] = []

    def seen(module: nn.Module, *_: object) -> None:
        if module not in order:
            order.append(module)

    handles = [
        m.register_forward_hook(seen) for m in model.modules() if isinstance(m, WEIGHT_LAYERS)
    ]
    idx = _first_batch(exp, seed)
    loss = loss_fn(_fit(model(X[idx]), y[idx]), y[idx])
    model.zero_grad()
    loss.backward()
    for h in handles:
        h.remove()
    rel: list[float] = []
    grads_finite = True
    for m in order:
        ws = [p for p in m.parameters() if p.dim() >= 2 and p.grad is not None]
        if not ws:
            continue
        g = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in ws))
        w = math.sqrt(sum(float(p.detach().pow(2).sum()) for p in ws))
        grads_finite = grads_finite and math.isfinite(g)
        rel.append(g / w if w > 0 else math.nan)
    through_time = _through_time(model, loss_fn, X[idx], y[idx])
    record = {
        "rel": rel,
        "loss_finite": math.isfinite(loss.item()),
        "grads_finite": grads_finite,
        "n_classes": exp.n_classes,
        "through_time": through_time,
    }
    record.update(_activations(model, loss_fn, X, y, seed))
    _INIT[key] = record
    return record


def _through_time(model: nn.Module, loss_fn: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    """A recurrent model is one weight layer however long the sequence: there the gradient's
    growth is read through time, as ||dL/dx_1|| / ||dL/dx_T|| (first input step over last),
    for inputs (N, T) or (N, T, F). NaN for a model without an nn.RNNBase."""
    if not any(isinstance(m, nn.RNNBase) for m in model.modules()) or X.dim() not in (2, 3):
        return math.nan
    x = X.clone().requires_grad_(True)
    model.zero_grad()
    loss_fn(_fit(model(x), y), y).backward()
    g = x.grad.reshape(x.shape[0], x.shape[1], -1).pow(2).sum(dim=(0, 2)).sqrt()
    model.zero_grad()
    return float(g[0] / g[-1]) if g[-1] > 0 else math.nan


def _probe_rows(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))[:PROBE_EXAMPLES]


def _activations(
    model: nn.Module, loss_fn: nn.Module, X: torch.Tensor, y: torch.Tensor, seed: int
) -> dict:
    """Dead ReLU units (pooled fraction), the most saturated sigmoid / tanh layer, the loss."""
    rows = _probe_rows(len(X), seed)
    relu_out: list[torch.Tensor] = []
    sat: list[float] = []
    last_conv = [False]
    has_act = any(isinstance(m, nn.ReLU | nn.Sigmoid | nn.Tanh) for m in model.modules())
    # a case's model that applies its activation as a call says which (the suite built it)
    declared = getattr(model, "functional_activation", None)

    def weight_pre(module: nn.Module, args: tuple) -> None:
        # a functional activation: what a weight layer that is not the model's first receives
        if weight_pre.calls > 0 and args and isinstance(args[0], torch.Tensor):
            x = args[0]
            finite = x.is_floating_point() and bool(torch.isfinite(x).all())
            if declared == "relu" or (
                declared is None and not has_act and finite and float(x.min()) >= 0
            ):
                # undeclared: no activation module at all and a nonnegative input (a relu)
                relu_out.append(_units_zero(x, last_conv[0]))
            elif declared in ("sigmoid", "tanh"):
                sat.append(float(_tails(x, declared).float().mean()))
        weight_pre.calls += 1
        last_conv[0] = isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d)

    weight_pre.calls = 0  # type: ignore[attr-defined]

    def relu(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        relu_out.append(_units_zero(out, last_conv[0]))

    def squash(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        kind = "sigmoid" if isinstance(module, nn.Sigmoid) else "tanh"
        sat.append(float(_tails(out, kind).float().mean()))

    handles = []
    for m in model.modules():
        if isinstance(m, WEIGHT_LAYERS):
            handles.append(m.register_forward_pre_hook(weight_pre))
        elif isinstance(m, nn.ReLU):
            handles.append(m.register_forward_hook(relu))
        elif isinstance(m, nn.Sigmoid | nn.Tanh):
            handles.append(m.register_forward_hook(squash))
    with torch.no_grad():
        out = model(X[rows])
        loss = float(loss_fn(_fit(out, y[rows]), y[rows]))
    for h in handles:
        h.remove()
    dead = torch.cat(relu_out) if relu_out else torch.zeros(0, dtype=torch.bool)
    return {
        "dead": float(dead.float().mean()) if len(dead) else math.nan,
        "relu_units": len(dead),
        "saturated": max(sat) if sat else math.nan,
        "loss": loss,
    }


def _tails(out: torch.Tensor, kind: str) -> torch.Tensor:
    """Outputs within 1% of a sigmoid's or tanh's bounds (1% of tanh's range of 2)."""
    if kind == "sigmoid":
        return (out < SATURATION_MARGIN) | (out > 1 - SATURATION_MARGIN)
    return out.abs() > 1 - 2 * SATURATION_MARGIN


def _units_zero(x: torch.Tensor, conv: bool) -> torch.Tensor:
    """Per unit, whether it is exactly zero for every example (and every position): a unit is
    a channel (dim 1) after a conv layer, the last dim otherwise."""
    x = x.detach()
    if conv and x.dim() >= 3:
        x = x.transpose(0, 1).reshape(x.shape[1], -1)
    else:
        x = x.reshape(-1, x.shape[-1]).T
    return (x == 0).all(dim=1)


@dataclass
class Record:
    losses: list[float]  # the training-batch loss of each step
    grad_norms: list[float]  # the total gradient norm of each step
    nonfinite_step: int | None  # the first step with NaN / Inf in loss, gradients or weights
    grad_overflow: bool  # a non-finite gradient from a finite loss
    evals: list[tuple[int, float, float]]  # (step, training loss, validation loss)
    dead_end: float  # dead_units' pooled fraction at the end of the run


_RUNS: dict[tuple[str, int], Record] = {}


def plain_record(case: Case, seed: int) -> Record:
    """One plain run of the case's steps (the same loop, seed and data order as ``plain_run``),
    recording what the run-time kinds are read from; it stops at the first non-finite value."""
    key = (case.name, seed)
    if key in _RUNS:
        return _RUNS[key]
    exp, model, loss_fn = _setup(case, seed)
    make_opt = exp.optimizer or (lambda p: torch.optim.SGD(p, lr=0.1))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_opt(params)
    X, y = exp.train
    Xv, yv = exp.val
    Xt, yt = X[:EVAL_TRAIN], y[:EVAL_TRAIN]
    steps = exp.steps
    at = {round(i * steps / EVALS) for i in range(1, EVALS + 1)}
    rec = Record([], [], None, False, [], math.nan)
    model.train()
    for done, idx in enumerate(_batches(len(X), exp.batch_size, seed, steps), 1):
        loss = loss_fn(_fit(model(X[idx]), y[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        g = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params if p.grad is not None))
        value = loss.item()
        opt.step()
        rec.losses.append(value)
        rec.grad_norms.append(g)
        weights_ok = all(bool(torch.isfinite(p).all()) for p in params)
        if not (math.isfinite(value) and math.isfinite(g) and weights_ok):
            rec.nonfinite_step = done
            rec.grad_overflow = math.isfinite(value) and not math.isfinite(g)
            break
        if done in at:
            rec.evals.append(
                (done, _evaluate(model, loss_fn, Xt, yt), _evaluate(model, loss_fn, Xv, yv))
            )
    if rec.nonfinite_step is None:
        rec.dead_end = _activations(model, loss_fn, X, y, seed)["dead"]
    _RUNS[key] = rec
    return rec


def vanishing_gradients(case: Case, seed: int) -> Verdict:
    init = init_record(case, seed)
    rel = init["rel"]
    kind = "vanishing_gradients"
    if len(rel) < 2 or not all(math.isfinite(r) for r in rel):
        return _verdict(case, seed, kind, "unmeasurable", math.nan, f"{len(rel)} weight layers")
    q = max(1, len(rel) // 4)
    head, tail = sum(rel[:q]) / q, sum(rel[-q:]) / q
    ratio = tail / head if head > 0 else math.inf
    time_ratio = 1 / init["through_time"] if init["through_time"] > 0 else math.nan
    top = max(rel)
    worst = max(ratio, time_ratio) if math.isfinite(time_ratio) else ratio
    if worst >= RATIO_PRESENT or top <= TINY_PRESENT:
        measured = "present"
    elif worst <= RATIO_ABSENT and top >= TINY_ABSENT:
        measured = "absent"
    else:
        measured = "borderline"
    detail = (
        f"last/first quarter of {len(rel)} layers {ratio:.3g}, through time (last/first step) "
        f"{time_ratio:.3g}, largest relative grad {top:.2g}"
    )
    return _verdict(case, seed, kind, measured, worst, detail)


def exploding_gradients(case: Case, seed: int) -> Verdict:
    init = init_record(case, seed)
    rel = init["rel"]
    kind = "exploding_gradients"
    inverse = math.nan
    if len(rel) >= 2 and all(math.isfinite(r) for r in rel):
        q = max(1, len(rel) // 4)
        head, tail = sum(rel[:q]) / q, sum(rel[-q:]) / q
        inverse = head / tail if tail > 0 else math.inf
    if math.isfinite(init["through_time"]):
        inverse = max(inverse, init["through_time"]) if math.isfinite(inverse) else math.nan
    run = plain_record(case, seed)
    g = run.grad_norms
    growth = max(g) / g[0] if g and g[0] > 0 and all(math.isfinite(v) for v in g) else math.nan
    overflow = run.grad_overflow or (init["loss_finite"] and not init["grads_finite"])
    inv, gro = (v if math.isfinite(v) else 0.0 for v in (inverse, growth))
    if overflow or inv >= RATIO_PRESENT or gro >= GROWTH_PRESENT:
        measured = "present"
    elif (inverse <= RATIO_ABSENT or (len(rel) < 2 and init["loss_finite"])) and (
        (math.isfinite(growth) and growth <= GROWTH_ABSENT)
        or (not math.isfinite(growth) and run.nonfinite_step is not None)
    ):
        measured = "absent"
    else:
        measured = "borderline"
    detail = (
        f"first/last quarter or through time {inverse:.3g}, run growth {growth:.3g}x, "
        f"overflow {overflow}"
    )
    return _verdict(case, seed, kind, measured, max(inv, gro), detail)


def dead_units(case: Case, seed: int) -> Verdict:
    init = init_record(case, seed)
    if init["relu_units"] == 0:
        return _verdict(case, seed, "dead_units", "unmeasurable", math.nan, "no ReLU units")
    end = plain_record(case, seed).dead_end
    value = max(init["dead"], end if math.isfinite(end) else 0.0)
    detail = f"{init['relu_units']} units: dead at init {init['dead']:.1%}, at the end {end:.1%}"
    return _verdict(
        case, seed, "dead_units", _band(value, DEAD_PRESENT, DEAD_ABSENT), value, detail
    )


def saturated_units(case: Case, seed: int) -> Verdict:
    value = init_record(case, seed)["saturated"]
    if not math.isfinite(value):
        return _verdict(case, seed, "saturated_units", "unmeasurable", value, "no sigmoid / tanh")
    measured = _band(value, SATURATED_PRESENT, SATURATED_ABSENT)
    return _verdict(case, seed, "saturated_units", measured, value, f"worst layer {value:.1%}")


def nonfinite(case: Case, seed: int) -> Verdict:
    """Binary, no band: a NaN / Inf in the loss, gradients or weights at some step."""
    step = plain_record(case, seed).nonfinite_step
    measured = "absent" if step is None else "present"
    return _verdict(
        case, seed, "nonfinite", measured, float(step or 0), f"first non-finite step {step}"
    )


def _smoothed(losses: list[float]) -> list[float]:
    w = max(5, len(losses) // 20)
    return [float(torch.tensor(losses[i : i + w]).median()) for i in range(0, len(losses), w)]


def diverging_loss(case: Case, seed: int) -> Verdict:
    run = plain_record(case, seed)
    kind = "diverging_loss"
    if run.nonfinite_step is not None and not math.isfinite(run.losses[-1]):
        if run.nonfinite_step == 1:  # never finite: nothing grew (a NaN from the data, say)
            return _verdict(case, seed, kind, "unmeasurable", math.nan, "loss NaN/Inf at step 1")
        return _verdict(
            case, seed, kind, "present", math.inf, f"loss NaN/Inf at {run.nonfinite_step}"
        )
    losses = run.losses
    peak = max(losses) / losses[0] if losses[0] > 0 else math.nan
    s = _smoothed(losses)
    floor = max(min(s), s[0] * RISE_FLOOR)
    rise = s[-1] / floor if floor > 0 else math.nan
    if peak >= PEAK_PRESENT or rise >= RISE_PRESENT:
        measured = "present"
    elif peak <= PEAK_ABSENT and rise <= RISE_ABSENT:
        measured = "absent"
    else:
        measured = "borderline"
    detail = f"peak/first {peak:.3g}, end/lowest (smoothed, floored) {rise:.3g}"
    return _verdict(case, seed, kind, measured, max(peak, rise), detail)


def stalled_loss(case: Case, seed: int) -> Verdict:
    run = plain_record(case, seed)
    if run.nonfinite_step is not None:
        return _verdict(case, seed, "stalled_loss", "unmeasurable", math.nan, "non-finite run")
    s = _smoothed(run.losses)
    change = abs(s[-1] - s[0]) / s[0] if s[0] > 0 else math.nan
    measured = _band(change, STALL_PRESENT, STALL_ABSENT, high_is_present=False)
    detail = f"smoothed loss {s[0]:.3g} -> {s[-1]:.3g}"
    return _verdict(case, seed, "stalled_loss", measured, change, detail)


def unscaled_inputs(case: Case, seed: int) -> Verdict:
    X = case.build().train[0]
    if not X.is_floating_point():  # token ids index an embedding: there is no scale to judge
        return _verdict(case, seed, "unscaled_inputs", "unmeasurable", math.nan, "integer ids")
    X = X.reshape(len(X), -1).double()
    mean, std = X.mean(0), X.std(0)
    varying = std[std > 1e-8]
    median = float(varying.median()) if len(varying) else math.nan
    value = max(float(mean.abs().max()), float(std.max()), 1 / median if median > 0 else math.inf)
    detail = (
        f"max |mean| {float(mean.abs().max()):.3g}, max std {float(std.max()):.3g}, "
        f"median std {median:.3g}"
    )
    return _verdict(
        case, seed, "unscaled_inputs", _band(value, SCALE_PRESENT, SCALE_ABSENT), value, detail
    )


def class_imbalance(case: Case, seed: int) -> Verdict:
    exp = case.build()
    y = exp.train[1]
    if y.is_floating_point():
        return _verdict(case, seed, "class_imbalance", "unmeasurable", math.nan, "float targets")
    counts = torch.bincount(y, minlength=exp.n_classes or 0).double()
    value = float(counts.max() / counts.min()) if counts.min() > 0 else math.inf
    detail = f"counts {int(counts.min())}..{int(counts.max())}"
    measured = _band(value, IMBALANCE_PRESENT, IMBALANCE_ABSENT)
    return _verdict(case, seed, "class_imbalance", measured, value, detail)


def bad_init_loss(case: Case, seed: int) -> Verdict:
    init = init_record(case, seed)
    classes = init["n_classes"]
    if not classes or classes < 2 or not math.isfinite(init["loss"]):
        why = "no classes" if not classes else "non-finite loss"
        return _verdict(case, seed, "bad_init_loss", "unmeasurable", math.nan, why)
    value = init["loss"] / math.log(classes)
    detail = f"init loss {init['loss']:.3g} vs ln {classes} = {math.log(classes):.3g}"
    measured = _band(value, INIT_LOSS_PRESENT, INIT_LOSS_ABSENT)
    return _verdict(case, seed, "bad_init_loss", measured, value, detail)


def overfitting(case: Case, seed: int) -> Verdict:
    run = plain_record(case, seed)
    if run.nonfinite_step is not None or len(run.evals) < 5:
        return _verdict(case, seed, "overfitting", "unmeasurable", math.nan, "non-finite run")
    train = [e[1] for e in run.evals]
    val = [e[2] for e in run.evals]
    best = min(range(len(val)), key=val.__getitem__)
    val_end = float(torch.tensor(val[-3:]).median())
    train_end = float(torch.tensor(train[-3:]).median())
    rise = val_end / val[best] - 1 if val[best] > 0 else math.nan
    gap = val_end - train_end
    rising = rise >= VAL_RISE_PRESENT and train_end <= TRAIN_FALL * train[best]
    fitted = train_end <= TRAIN_FALL * train[0]  # a model that did not fit cannot overfit
    if fitted and (rising or (gap >= GAP_PRESENT and val_end >= 2 * train_end)):
        measured = "present"
    elif rise <= VAL_RISE_ABSENT and (gap <= GAP_ABSENT or val_end <= 1.2 * train_end):
        measured = "absent"
    else:
        measured = "borderline"
    detail = (
        f"val rise from its min {rise:+.1%}, val - train {gap:.3g} "
        f"({val_end:.3g} vs {train_end:.3g})"
    )
    return _verdict(case, seed, "overfitting", measured, rise, detail)


MEASURES = {
    "vanishing_gradients": vanishing_gradients,
    "exploding_gradients": exploding_gradients,
    "dead_units": dead_units,
    "saturated_units": saturated_units,
    "nonfinite": nonfinite,
    "diverging_loss": diverging_loss,
    "stalled_loss": stalled_loss,
    "unscaled_inputs": unscaled_inputs,
    "class_imbalance": class_imbalance,
    "bad_init_loss": bad_init_loss,
    "overfitting": overfitting,
    "still_improving": still_improving,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--pattern", nargs="+", default=[""], help="only cases whose name or family contains one"
    )
    parser.add_argument("--kinds", nargs="+", default=list(MEASURES), choices=list(MEASURES))
    parser.add_argument("--quiet", action="store_true", help="print only what disagrees")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    flagged: list[Verdict] = []
    counts = {
        k: {"present": 0, "absent": 0, "borderline": 0, "unmeasurable": 0} for k in args.kinds
    }
    for case in CASES:
        if not any(p in case.name or p in case.family for p in args.pattern):
            continue
        for kind in args.kinds:
            if kind == "still_improving" and not (case.healthy or kind in case.expected):
                continue  # twice the steps is costly: only where the label says something
            for seed in args.seeds:
                v = MEASURES[kind](case, seed)
                counts[kind][v.measured] += 1
                flag = "DISAGREES" if v.disagrees else "unlabelled" if v.unlabelled else "ok"
                if v.disagrees or v.unlabelled:
                    flagged.append(v)
                if args.quiet and flag == "ok":
                    continue
                print(
                    f"{flag:10s} {v.case:45s} seed {seed}  {v.kind}: {v.measured:12s} "
                    f"{v.value:.3g} ({v.detail or _still_detail(v)}; label: {v.labelled})",
                    flush=True,
                )
    print(f"\n{time.perf_counter() - started:.0f} s")
    print("\n| kind | present | absent | borderline | unmeasurable |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for kind, c in counts.items():
        print(
            f"| {kind} | {c['present']} | {c['absent']} | {c['borderline']} | {c['unmeasurable']} |"
        )
    print("\n| case | seed | kind | label | measured | value |")
    print("| --- | ---: | --- | --- | --- | --- |")
    for v in flagged:
        label = v.labelled if v.disagrees else "not expected nor allowed"
        print(
            f"| {v.case} | {v.seed} | {v.kind} | {label} | {v.measured} "
            f"| {v.detail or _still_detail(v)} |"
        )


def _still_detail(v: Verdict) -> str:
    return f"2x steps: val loss {v.value:+.1%}"


if __name__ == "__main__":
    main()

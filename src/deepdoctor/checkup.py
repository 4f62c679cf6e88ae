"""checkup: how trainable a model is at initialisation, from one forward and backward pass.

Most of what makes a deep network hard to train is visible before the first step:
activations that shrink or blow up through depth, gradients that fall geometrically towards
the input, units saturated or dead from the start, a loss at initialisation far from
ln(classes), inputs far from unit scale. A checkup measures these on one batch and names
them with the finding kinds diagnose uses, at a cost of about one training step.

How the pass is made
--------------------
The model runs in training mode (as the first training step sees it: dropout on, batch norm
using batch statistics), with torch's RNG seeded by ``seed``. Gradients come from
``torch.autograd.grad``, so ``.grad`` is never written, and no optimizer steps. Afterwards
everything is put back: the train / eval mode of every submodule, buffers (batch-norm
running statistics), and the global RNG states of torch, numpy and Python. All statistics
are gathered as tensors in hooks and read back with two host syncs (plus one for each
vanishingly small gradient norm, which ``probe._norms`` recomputes in float64).

What is measured, per layer (every module owning trainable parameters, in forward order):
output mean and std, weight-gradient norm (parameters whose name does not contain
``bias``), its ratio to the weight norm, and the dead / saturated fractions of the
activation modules it feeds (the rules of ``deepdoctor.probe``). Across layers: the rate at
which the gradient norm changes per weight layer (a least-squares fit of log gradient norm
against layer index, over the layers with a weight matrix or kernel), and from it the
trainable depth: the number of weight layers over which the gradient would change by a
factor of ``DEPTH_SCALE_FACTOR``. Plus the input's scale, the loss against a calibrated
start (ln of classes), the logit scale, the class balance of the batch, and the model's
complexity (``deepdoctor.complexity``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook

from . import complexity as _complexity
from ._checks import check_int
from .complexity import Complexity, located_errors, untouched
from .experiment import Experiment
from .findings import Finding, _jsonable
from .probe import (
    CHANNEL_FIRST_TYPES,
    DYING_ACTIVATIONS,
    ROOT_NAME,
    SATURATING_BOUNDS,
    _activation_stat_tensor,
    _forward_ordered,
    _input_stat_tensor,
    _is_bias,
    _norms,
    activation_kind,
    parameter_layers,
)
from .results import Result
from .trace import ACT_STATS, INPUT_STATS
from .training import (
    _unpack,
    as_tensors,
    batches,
    compute_loss,
    default_loss,
    fit_output,
    infer_task,
    is_loader,
    logits_of,
    targets_for,
)

# -- thresholds ------------------------------------------------------------------------------

# "Barely learns": a gradient 10^6 times smaller than the output layer's moves its weights
# a millionth as fast, i.e. not at all within any ordinary training budget.
DEPTH_SCALE_FACTOR = 1e6
# Fewer weight layers than this give a slope from two points: no trend to report.
MIN_FIT_LAYERS = 3
# A slope within 2 standard errors of zero is layer-to-layer scatter, not a geometric trend.
MIN_TREND_T = 2.0
# First-to-last gradient ratio below 1e-5: past what shallow sigmoid nets, which train,
# show at init (down to ~1e-4 with 2-3 layers: sigmoid's slope is at most 1/4, and a
# low-dimensional input makes the first layer's gradient smaller still).
VANISHING_RATIO_WARNING = 1e-5
# Above 30: the first layer's gradient is 30x the last's, too far apart for one learning
# rate to suit both; He / Xavier nets up to 10 layers, transformers and LSTMs stay below 10.
EXPLODING_RATIO_WARNING = 30.0
# Beyond DEPTH_SCALE_FACTOR either way: the net is deeper than its trainable depth.
GRADIENT_RATIO_CRITICAL = DEPTH_SCALE_FACTOR
# Median gradient-to-weight ratio below 1e-5: every layer's gradient is vanishingly small,
# even where the ratio between layers looks flat (tiny weights shrink the signal forward and
# the gradient backward, and the two cancel in the weight gradient). Healthy nets: > 1e-3.
GRAD_TO_WEIGHT_MIN = 1e-5
# A quarter of a layer's outputs in the flat tails: its gradient is cut by as much.
SATURATED_FRAC_WARNING = 0.25
SATURATED_FRAC_CRITICAL = 0.5  # half of the layer passes almost no gradient
# Half of a layer's ReLU units silent on every example of the batch. Not less: deep He
# nets (and residual ones) at init already have up to ~40% of a late layer's units with one
# sign for the whole batch, because depth makes the examples' representations alike.
DEAD_FRAC_WARNING = 0.5
DEAD_FRAC_CRITICAL = 0.9  # the layer is all but silent: the gradient path is cut
# Cross-entropy at init more than 4 nats above ln(classes): the true class gets about
# e^-4 ~ 1/55 of a uniform guess's probability, the logits are confidently wrong. He init
# on every layer (the output too) or a residual stream reaches ~2.4 nats and trains fine.
INIT_LOSS_EXCESS_WARNING = 4.0
INIT_LOSS_EXCESS_CRITICAL = 10.0  # softmax saturated: huge, one-sided first updates
# MSE at init over 4x that of predicting zero: outputs spread twice the targets' scale.
INIT_MSE_RATIO_WARNING = 4.0
INIT_MSE_RATIO_CRITICAL = 100.0  # outputs ten times the targets' scale
# Inputs whose features sit more than 5 units from zero or spread more than 5 units: the
# first layer's pre-activations are that many times larger than its initialisation assumes.
INPUT_SCALE_MAX = 5.0
# ... or whose overall scale is below 0.01: the first layers start a hundred times too quiet.
INPUT_SCALE_MIN = 0.01
# Class entropy over ln(classes) below 0.85: a balanced batch with >= 5 examples per class
# scores above 0.9 in 999 draws of 1000; a 10:1 spread over 10 classes scores ~0.87, a 3:1
# binary split ~0.81, a 100:1 spread ~0.68.
CLASS_BALANCE_MIN = 0.85
CLASS_BALANCE_CRITICAL = 0.5  # a binary batch split 90:10, or worse
MIN_PER_CLASS = 5  # fewer examples per class than this in the batch: balance is not judged

WEIGHT_LAYER_TYPES = (
    nn.Linear,
    nn.modules.conv._ConvNd,
    nn.RNNBase,
    nn.Embedding,
    nn.MultiheadAttention,
)


@dataclass
class LayerCheck:
    """What the checkup measured in one parameter layer."""

    name: str
    type: str
    out_mean: float
    out_std: float
    grad_norm: float
    grad_to_weight: float
    dead_frac: float
    saturated_frac: float
    weight_layer: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "out_mean": self.out_mean,
            "out_std": self.out_std,
            "grad_norm": self.grad_norm,
            "grad_to_weight": self.grad_to_weight,
            "dead_frac": self.dead_frac,
            "saturated_frac": self.saturated_frac,
        }


@dataclass
class Checkup(Result):
    """A model's trainability at initialisation: findings and the measurements behind them.

    ``layers`` per parameter layer in forward order; ``input`` the batch's input scale;
    ``loss`` the loss at init against its calibrated value; ``depth`` the gradient's rate of
    change per weight layer and the trainable depth it implies; ``complexity`` the model's
    size and cost.
    """

    result_type = "checkup"

    findings: list[Finding]
    layers: list[LayerCheck]
    input: dict[str, float]
    loss: dict[str, Any]
    depth: dict[str, Any]
    complexity: Complexity
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.update(
            _jsonable(
                {
                    "layers": [layer.to_dict() for layer in self.layers],
                    "input": dict(self.input),
                    "loss": dict(self.loss),
                    "depth": dict(self.depth),
                }
            )
        )
        out["complexity"] = self.complexity.to_dict()
        return out

    @classmethod
    def from_experiment(cls, experiment: Experiment, seed: int | None = None) -> Checkup:
        return checkup_experiment(experiment, seed=seed)

    def depth_summary(self) -> str:
        """One sentence on the trainable depth, for a person."""
        return depth_sentence(self.depth)

    def __repr__(self) -> str:
        kinds = ", ".join(f"{f.kind} ({f.severity})" for f in self.findings) or "none"
        state = "healthy" if self.healthy else "unhealthy"
        return f"Checkup({state}; findings: {kinds}; {len(self.layers)} layers)"


def depth_sentence(depth: dict[str, Any]) -> str:
    rate, trainable, current = (
        depth.get(k) for k in ("grad_rate_per_layer", "trainable_depth", "current_depth")
    )
    if rate is None or not math.isfinite(rate):
        return (
            f"trainable depth: not estimated ({current or 0} weight layers; at least "
            f"{MIN_FIT_LAYERS} are needed for a trend)"
        )
    direction = "shrinks" if rate < 1 else "grows"
    per_layer = f"the gradient norm {direction} x{rate:.3g} per layer towards the input"
    if trainable is None or not math.isfinite(trainable):
        return f"trainable depth: unlimited at this rate ({per_layer}; {current} weight layers)"
    verdict = "beyond it" if current > trainable else "within it"
    return (
        f"trainable depth: about {trainable:,.0f} weight layers ({per_layer}); layers deeper "
        f"than that will barely learn. This net has {current} ({verdict})"
    )


# -- the pass -------------------------------------------------------------------------------


def _batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if is_loader(batch):
        try:
            first = next(iter(batch))
        except StopIteration:
            raise ValueError("the DataLoader yielded no batches; give it some data") from None
        batch = _unpack(first)
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        raise TypeError(
            f"batch must be a tuple (X, y) of tensors or a DataLoader, got {type(batch).__name__}"
        )
    return as_tensors(batch, "batch")


def _check_devices(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> None:
    devices = {p.device for p in model.parameters()}
    if len(devices) > 1:
        return  # a model split over devices moves its own activations
    (device,) = devices
    for label, t in (("inputs", X), ("targets", y)):
        if t.device != device:
            raise ValueError(
                f"the model's parameters are on {device} but the batch's {label} are on "
                f"{t.device}; move them to one device, e.g. X, y = X.to({str(device)!r}), "
                f"y.to({str(device)!r})"
            )


class _Rows:
    """Small stat vectors gathered into preallocated blocks rather than kept as thousands of
    tiny tensors, each of which would hold a few hundred bytes through the backward pass."""

    def __init__(self, width: int, block: int = 256) -> None:
        self.width, self.block = width, block
        self.blocks: list[torch.Tensor] = []
        self.n = 0

    def add(self, values: torch.Tensor) -> None:
        if self.n == len(self.blocks) * self.block:  # on the values' device: no copy back
            self.blocks.append(values.new_empty(self.block, self.width, dtype=torch.float32))
        self.blocks[-1][self.n % self.block].copy_(values, non_blocking=True)
        self.n += 1

    def tensors(self) -> list[torch.Tensor]:
        """The rows written, as one tensor (an empty list when none were)."""
        if not self.blocks:
            return []
        device = self.blocks[0].device
        return [torch.cat([b.to(device) for b in self.blocks])[: self.n]]


def _gradient_norms(loss: torch.Tensor, params: list[torch.Tensor]) -> list[float]:
    """The squared norm of each parameter's gradient of ``loss`` (NaN for unused ones).

    Each parameter's hook takes the norm (in float64: a vanishing gradient of 1e-23 squares
    below float32's range) and hands autograd a zero of no size in place of the gradient,
    so no more than a layer's gradient is alive at a time: the pass needs less memory than a
    training step, which keeps every gradient. ``torch.autograd.grad`` never writes ``.grad``.
    """
    norms: dict[int, torch.Tensor] = {}
    zeros: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def make_hook(i: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def hook(grad: torch.Tensor) -> torch.Tensor:
            # autograd runs hooks with grad mode off: no graph is recorded here
            norms[i] = torch.linalg.vector_norm(grad, dtype=torch.float64)
            key = (grad.dtype, grad.device)
            if key not in zeros:
                zeros[key] = grad.new_zeros(())
            return zeros[key].expand_as(grad)

        return hook

    handles = [p.register_hook(make_hook(i)) for i, p in enumerate(params)]
    try:
        torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    if not norms:
        return [math.nan] * len(params)
    device = next(iter(norms.values())).device
    values = torch.stack([n.to(device) for n in norms.values()]).tolist()
    found = dict(zip(norms, values, strict=True))
    return [found[i] ** 2 if i in found else math.nan for i in range(len(params))]


@dataclass
class _Pass:
    """Raw numbers of one observed forward / backward pass."""

    order: list[str]
    out_mean: dict[str, float]
    out_std: dict[str, float]
    acts: list[tuple[str, str | None, dict[str, float]]]  # (activation, source, stats)
    grad_norm: dict[str, float]
    grad_to_weight: dict[str, float]
    input: dict[str, float]
    loss: float
    logit_std: float
    n_outputs: int
    grads_finite: bool
    weights_finite: bool


def _observe(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[..., torch.Tensor],
    task: str,
    layers: dict[str, nn.Module],
) -> _Pass:
    ran: dict[str, None] = {}
    out_names: list[str] = []  # layers whose output stats are in out_rows, in that order
    out_rows = _Rows(2)
    act_records: list[tuple[str, str | None]] = []  # (activation, source layer) of act_rows
    act_rows = _Rows(len(ACT_STATS))
    last: list[str | None] = [None]

    layer_of = {module: name for name, module in layers.items()}
    act_of = {
        module: (name or ROOT_NAME, kind)
        for name, module in model.named_modules()
        if (kind := activation_kind(module)) is not None
    }

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        # one global hook, not one per module: see complexity.located_errors
        name = layer_of.get(module)
        if name is not None:
            last[0] = name
            if name in ran:
                return
            ran[name] = None
            out = output[0] if isinstance(output, tuple | list) else output
            if isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel() > 1:
                x = out.detach().float()  # detached: nothing recorded, no no_grad needed
                out_rows.add(torch.stack([x.mean(), x.std()]))  # 3x faster than std_mean
                out_names.append(name)
            return
        act = act_of.get(module)
        if act is not None and isinstance(output, torch.Tensor):
            src = last[0]
            channel_first = src is not None and isinstance(layers[src], CHANNEL_FIRST_TYPES)
            act_rows.add(_activation_stat_tensor(output, act[1], channel_first, moments=False))
            act_records.append((act[0], src))

    handle = register_module_forward_hook(hook)
    try:
        with located_errors(model):
            output = model(X)
    finally:
        handle.remove()
    yt = targets_for(y, task)
    out = fit_output(logits_of(output), yt, task)
    loss = compute_loss(loss_fn, out, yt)

    order = _forward_ordered(list(layers), list(ran))
    params = [
        (lname, pname, p)
        for lname in order
        for pname, p in layers[lname].named_parameters(recurse=False)
        if p.requires_grad
    ]
    if not loss.requires_grad:
        raise ValueError(
            "the loss does not depend on any trainable parameter, so there is no gradient to "
            "check; does the model's forward use its layers?"
        )
    grad_sq = _gradient_norms(loss, [p for _, _, p in params])
    with torch.no_grad():
        weights = [(lname, p.detach()) for lname, pname, p in params if not _is_bias(pname)]
        weight_norms = _norms([w for _, w in weights])
        stats = out_rows.tensors() + act_rows.tensors()
        logits = out.detach().float()
        stats.append(
            torch.stack(
                [
                    loss.detach().float(),
                    logits.std() if logits.numel() > 1 else logits.new_zeros(()),
                ]
            )
        )
        in_stats = _input_stat_tensor(X)
        if in_stats is not None:
            stats.append(in_stats)
        device = stats[-1].device
        flat = torch.cat([t.reshape(-1).to(device) for t in stats]).tolist()

    g_sq: dict[str, float] = {}  # weight gradients only; unused parameters stay NaN
    for (lname, pname, _), v in zip(params, grad_sq, strict=True):
        if not _is_bias(pname) and not math.isnan(v):
            g_sq[lname] = g_sq.get(lname, 0.0) + v
    w_sq: dict[str, float] = {}
    for (lname, _), v in zip(weights, weight_norms, strict=True):
        w_sq[lname] = w_sq.get(lname, 0.0) + v * v
    grad_norm = {n: math.sqrt(g_sq[n]) if n in g_sq else math.nan for n in order}
    grad_to_weight = {
        n: grad_norm[n] / math.sqrt(w_sq[n]) if w_sq.get(n, 0.0) > 0 else math.nan for n in order
    }
    grad_values = [v for v in grad_sq if not math.isnan(v)]

    it = iter(flat)
    out_mean: dict[str, float] = {}
    out_std: dict[str, float] = {}
    for name in out_names:
        out_mean[name], out_std[name] = next(it), next(it)
    acts = [(aname, src, {s: next(it) for s in ACT_STATS}) for aname, src in act_records]
    loss_value, logit_std = next(it), next(it)
    inputs = (
        {s: next(it) for s in INPUT_STATS}
        if in_stats is not None
        else {s: math.nan for s in INPUT_STATS}
    )
    return _Pass(
        order=order,
        out_mean=out_mean,
        out_std=out_std,
        acts=acts,
        grad_norm=grad_norm,
        grad_to_weight=grad_to_weight,
        input=inputs,
        loss=loss_value,
        logit_std=logit_std,
        n_outputs=int(out.shape[1]) if task == "classification" else (2 if task == "binary" else 0),
        grads_finite=all(math.isfinite(v) for v in grad_values),
        weights_finite=all(math.isfinite(v) for v in weight_norms),
    )


# -- depth ----------------------------------------------------------------------------------


def fit_depth(grad_norms: list[float]) -> dict[str, Any]:
    """The geometric rate of gradient change per weight layer, and the trainable depth.

    ``grad_norms`` are the weight layers' gradient norms in forward order (input first).
    ``grad_rate_per_layer`` is the factor by which the norm is multiplied per layer going
    towards the input (below 1: vanishing, above 1: exploding), from a least-squares fit of
    log10 norm against layer index. ``trainable_depth`` is the number of weight layers over
    which that rate changes the norm by ``DEPTH_SCALE_FACTOR``; inf when the slope is within
    ``MIN_TREND_T`` standard errors of zero (no geometric trend, e.g. at the edge of chaos).
    Non-positive or non-finite norms are left out of the fit.

    The estimate extrapolates the rate seen over the net's own depth. Where the rate itself
    changes with depth (ReLU or tanh with torch's default init: the signal shrinks until the
    biases dominate, and the decay speeds up) a shallow net underestimates it; check such a
    setup at 16 layers or more.
    """
    current = len(grad_norms)
    first, last = (grad_norms[0], grad_norms[-1]) if grad_norms else (math.nan, math.nan)
    ratio = first / last if last > 0 else math.nan
    points = [(i, math.log10(g)) for i, g in enumerate(grad_norms) if g > 0 and math.isfinite(g)]
    rate = trainable = math.nan
    if len(points) >= MIN_FIT_LAYERS:
        x, logs = np.array(points).T
        slope, intercept = np.polyfit(x, logs, 1)  # log10 change per layer towards the output
        rate = float(10.0**-slope)
        scatter = logs - (slope * x + intercept)
        spread = float(((x - x.mean()) ** 2).sum())
        stderr = math.sqrt(float((scatter**2).sum()) / max(1, len(x) - 2) / spread)
        trend = abs(slope) > MIN_TREND_T * stderr
        trainable = 1 + math.log10(DEPTH_SCALE_FACTOR) / float(abs(slope)) if trend else math.inf
    return {
        "grad_rate_per_layer": rate,
        "trainable_depth": trainable,
        "current_depth": current,
        "first_to_last_ratio": ratio,
    }


# -- findings -------------------------------------------------------------------------------


def _init_remedy(act_kinds: list[str]) -> str:
    """He initialisation for ReLU-family nets, Xavier for the rest."""
    if not act_kinds:
        return "xavier_init"
    dominant = max(set(act_kinds), key=act_kinds.count)
    return (
        "he_init"
        if dominant in ("relu", "leaky_relu", "prelu", "relu6", "elu", "gelu", "silu", "mish")
        else "xavier_init"
    )


def _gradient_findings(
    depth: dict[str, Any], rows: list[LayerCheck], saturating: bool, init: str
) -> list[Finding]:
    ratio = depth["first_to_last_ratio"]
    names = [r.name for r in rows]
    early = names[: max(1, len(names) // 3)]
    relative = [
        r.grad_to_weight for r in rows if r.grad_to_weight > 0 and math.isfinite(r.grad_to_weight)
    ]
    median = float(np.median(relative)) if relative else math.nan
    evidence = {
        "first_to_last_ratio": ratio,
        "grad_rate_per_layer": depth["grad_rate_per_layer"],
        "trainable_depth": depth["trainable_depth"],
        "current_depth": depth["current_depth"],
        "median_grad_to_weight": median,
    }
    vanish_remedies = (
        ["relu_activation", "batch_norm", "residual", "he_init", "layer_norm"]
        if saturating
        else [init, "batch_norm", "residual", "layer_norm"]
    )
    measurable = math.isfinite(ratio) and ratio > 0 and len(rows) >= 2
    if measurable and ratio < VANISHING_RATIO_WARNING:
        severity = "critical" if ratio <= 1 / GRADIENT_RATIO_CRITICAL else "warning"
        return [
            Finding(
                "vanishing_gradients",
                severity,
                f"at initialisation the first weight layer's gradient is {1 / ratio:.2g} times "
                "smaller than the last one's: the early layers will barely learn",
                early,
                {**evidence, "threshold": VANISHING_RATIO_WARNING},
                vanish_remedies,
            )
        ]
    if measurable and ratio > EXPLODING_RATIO_WARNING:
        severity = "critical" if ratio >= GRADIENT_RATIO_CRITICAL else "warning"
        return [
            Finding(
                "exploding_gradients",
                severity,
                f"at initialisation the first weight layer's gradient is {ratio:.2g} times larger "
                "than the last one's: a learning rate that suits the last layers throws the first "
                "ones off",
                early,
                {**evidence, "threshold": EXPLODING_RATIO_WARNING},
                [init, "gradient_clipping", "residual", "lower_lr", "layer_norm"],
            )
        ]
    if median < GRAD_TO_WEIGHT_MIN:
        return [
            Finding(
                "vanishing_gradients",
                "critical",
                f"at initialisation every layer's gradient is tiny (median gradient / weight "
                f"{median:.2g}): the signal dies out through depth and no layer will learn",
                names,
                {**evidence, "threshold": GRAD_TO_WEIGHT_MIN},
                vanish_remedies,
            )
        ]
    return []


def _unit_findings(layers: list[LayerCheck], unscaled: bool, init: str) -> list[Finding]:
    findings = []
    rules = (
        ("saturated_units", "saturated_frac", SATURATED_FRAC_WARNING, SATURATED_FRAC_CRITICAL),
        ("dead_units", "dead_frac", DEAD_FRAC_WARNING, DEAD_FRAC_CRITICAL),
    )
    for kind, stat, warn, crit in rules:
        values = {layer.name: getattr(layer, stat) for layer in layers}
        hit = [n for n, v in values.items() if math.isfinite(v) and v >= warn]
        if not hit:
            continue
        worst = max(values[n] for n in hit)
        measured = [v for v in values.values() if math.isfinite(v)]
        evidence = {
            f"max_{stat}": worst,
            f"mean_{stat}": float(np.mean(measured)),
            "layers_over": len(hit),
            "layers_measured": len(measured),
            "threshold": warn,
        }
        severity = "critical" if worst >= crit else "warning"
        first = ["standardize_inputs"] if unscaled else []
        if kind == "saturated_units":
            summary = (
                f"{worst:.0%} of the outputs of the worst layer sit in the flat tails "
                "of their sigmoid / tanh at initialisation, where almost no gradient "
                "passes"
            )
            remedies = first + ["xavier_init", "relu_activation", "batch_norm", "layer_norm"]
        else:
            summary = (
                f"{worst:.0%} of the worst layer's ReLU units output zero for every "
                "example at initialisation: they get no gradient and may never recover"
            )
            remedies = first + ["he_init", "leaky_relu_activation", "batch_norm"]
        findings.append(Finding(kind, severity, summary, hit, evidence, remedies))
    return findings


def _loss_findings(loss: dict[str, Any], unscaled: bool, init: str) -> list[Finding]:
    value, expected = loss["value"], loss["expected"]
    if not (math.isfinite(value) and expected is not None and math.isfinite(expected)):
        return []
    remedies = (["standardize_inputs"] if unscaled else []) + [init, "batch_norm", "layer_norm"]
    evidence = {"loss": value, "expected": expected, "logit_std": loss["logit_std"]}
    if loss["n_classes"]:  # cross-entropy: the excess over ln(classes), in nats
        excess = value - expected
        if excess < INIT_LOSS_EXCESS_WARNING:
            return []
        severity = "critical" if excess >= INIT_LOSS_EXCESS_CRITICAL else "warning"
        return [
            Finding(
                "bad_init_loss",
                severity,
                f"the loss at initialisation is {value:.3g}, {excess:.3g} nats above a calibrated "
                f"start (ln({loss['n_classes']}) = {expected:.3g}): the initial logits (std "
                f"{loss['logit_std']:.3g}) are confidently wrong",
                [],
                {**evidence, "excess_nats": excess, "threshold": INIT_LOSS_EXCESS_WARNING},
                remedies,
            )
        ]
    ratio = value / expected if expected > 0 else math.inf
    if ratio < INIT_MSE_RATIO_WARNING:
        return []
    severity = "critical" if ratio >= INIT_MSE_RATIO_CRITICAL else "warning"
    return [
        Finding(
            "bad_init_loss",
            severity,
            f"the loss at initialisation is {value:.3g}, {ratio:.3g} times that of predicting zero "
            f"({expected:.3g}): the initial outputs (std {loss['logit_std']:.3g}) are far larger "
            "than the targets",
            [],
            {**evidence, "ratio": ratio, "threshold": INIT_MSE_RATIO_WARNING},
            remedies,
        )
    ]


def _unscaled(inputs: dict[str, float]) -> dict[str, Any] | None:
    """What makes the inputs unscaled, or None when they are fine (or not measurable)."""
    mean, std = inputs["mean"], inputs["std"]
    if not (math.isfinite(mean) and math.isfinite(std)):
        return None
    reasons = {}
    if inputs["feature_mean_absmax"] > INPUT_SCALE_MAX:
        reasons["feature_mean_absmax"] = inputs["feature_mean_absmax"]
    if inputs["feature_std_max"] > INPUT_SCALE_MAX:
        reasons["feature_std_max"] = inputs["feature_std_max"]
    scale = math.hypot(mean, std)
    if scale < INPUT_SCALE_MIN:
        reasons["scale"] = scale
    return reasons or None


def _input_findings(inputs: dict[str, float]) -> list[Finding]:
    reasons = _unscaled(inputs)
    if reasons is None:
        return []
    small = "scale" in reasons
    summary = (
        f"the inputs are tiny (overall scale {reasons['scale']:.2g}): the first layers start "
        "far quieter than their initialisation assumes"
        if small
        else f"input features are far from zero mean / unit scale (largest feature mean "
        f"{inputs['feature_mean_absmax']:.3g}, largest feature std "
        f"{inputs['feature_std_max']:.3g}): the first layer's pre-activations start too large"
    )
    return [
        Finding(
            "unscaled_inputs",
            "warning",
            summary,
            [],
            {**inputs, "threshold_max": INPUT_SCALE_MAX, "threshold_min": INPUT_SCALE_MIN},
            ["standardize_inputs", "batch_norm"],
        )
    ]


def _class_findings(y: torch.Tensor, task: str, n_classes: int) -> list[Finding]:
    if task not in ("classification", "binary") or n_classes < 2:
        return []
    labels = (y > 0.5).long() if task == "binary" else y.reshape(-1).long()
    if labels.numel() < MIN_PER_CLASS * n_classes:
        return []
    counts = torch.bincount(labels, minlength=n_classes).double()
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
    balance = entropy / math.log(n_classes)
    if balance >= CLASS_BALANCE_MIN:
        return []
    shares = sorted(p.tolist(), reverse=True)
    severity = "critical" if balance < CLASS_BALANCE_CRITICAL else "warning"
    return [
        Finding(
            "class_imbalance",
            severity,
            f"the batch is dominated by a few classes (the largest holds {shares[0]:.0%}, the "
            f"smallest {shares[-1]:.0%}): the model can score well by predicting the majority",
            [],
            {
                "balance": balance,
                "largest_share": shares[0],
                "smallest_share": shares[-1],
                "class_counts": [int(c) for c in counts.tolist()],
                "threshold": CLASS_BALANCE_MIN,
            },
            ["class_weights", "data_augmentation"],
        )
    ]


def _nonfinite_finding(
    obs: _Pass, layers: list[LayerCheck], unscaled: bool, init: str
) -> list[Finding]:
    # a layer whose output was not measured (not called as a module) has NaN stats too
    first_bad = next(
        (
            layer.name
            for layer in layers
            if layer.name in obs.out_mean
            and not (math.isfinite(layer.out_mean) and math.isfinite(layer.out_std))
        ),
        None,
    )
    if math.isfinite(obs.loss) and first_bad is None and obs.grads_finite and obs.weights_finite:
        return []
    where = (
        f"first in layer {first_bad!r}"
        if first_bad
        else "in the weights"
        if not obs.weights_finite
        else "in the loss or gradients"
    )
    return [
        Finding(
            "nonfinite",
            "critical",
            f"NaN or Inf at initialisation, {where}: the activations overflow before any training",
            [first_bad] if first_bad else [],
            {
                "loss": obs.loss,
                "first_nonfinite_layer": first_bad,
                "grads_finite": obs.grads_finite,
                "weights_finite": obs.weights_finite,
            },
            (["standardize_inputs"] if unscaled else [])
            + [init, "batch_norm", "gradient_clipping"],
        )
    ]


# -- the entry point -------------------------------------------------------------------------


def checkup(
    model: nn.Module,
    batch: Any,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    *,
    n_samples: int | None = None,
    n_classes: int | None = None,
    seed: int = 0,
) -> Checkup:
    """Check ``model``'s trainability at initialisation on one batch, changing nothing.

    batch: ``(X, y)`` or a DataLoader (its first batch is used); use the batch size you
    train with. loss_fn: default cross-entropy for integer targets, MSE otherwise.
    n_samples: the size of the training set (for parameters per sample). n_classes: the
    number of classes, when it differs from the model's output width. seed: seeds dropout.

    >>> import deepdoctor as dd
    >>> split = dd.data.load("digits")
    >>> chk = dd.checkup(dd.models.mlp(64, 10, depth=3, init="he"), split.train)
    >>> chk.healthy
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    seed = check_int("seed", seed, minimum=0)
    if n_samples is not None:
        n_samples = check_int("n_samples", n_samples, minimum=1)
    if n_classes is not None:
        n_classes = check_int("n_classes", n_classes, minimum=1)
    X, y = _batch(batch)
    layers, _frozen = parameter_layers(model)
    _check_devices(model, X, y)
    task = infer_task(y, loss_fn)
    loss_fn = loss_fn if loss_fn is not None else default_loss(y)

    with untouched(model):
        torch.manual_seed(seed)
        model.train()
        obs = _observe(model, X, y, loss_fn, task, layers)
    comp = _complexity.measure(model, X[:2], n_samples=n_samples)

    by_source: dict[str, list[dict[str, float]]] = {}
    for aname, src, stats in obs.acts:
        by_source.setdefault(src or aname, []).append(stats)

    def worst(name: str, stat: str) -> float:
        vals = [s[stat] for s in by_source.get(name, []) if math.isfinite(s[stat])]
        return max(vals) if vals else math.nan

    checks = [
        LayerCheck(
            name=n,
            type=type(layers[n]).__name__,
            out_mean=obs.out_mean.get(n, math.nan),
            out_std=obs.out_std.get(n, math.nan),
            grad_norm=obs.grad_norm[n],
            grad_to_weight=obs.grad_to_weight[n],
            dead_frac=worst(n, "dead_frac"),
            saturated_frac=worst(n, "saturated_frac"),
            weight_layer=_is_weight_layer(layers[n]),
        )
        for n in obs.order
    ]
    # activations with no parameter layer before them get a row of their own
    checks += [
        LayerCheck(
            n,
            "activation",
            math.nan,
            math.nan,
            math.nan,
            math.nan,
            worst(n, "dead_frac"),
            worst(n, "saturated_frac"),
            False,
        )
        for n in by_source
        if n not in layers
    ]

    weight_rows = [c for c in checks if c.weight_layer]
    depth = fit_depth([c.grad_norm for c in weight_rows])
    kinds = [k for k in (activation_kind(m) for m in model.modules()) if k is not None]
    classes = n_classes or obs.n_outputs
    loss = {
        "value": obs.loss,
        "expected": _expected_loss(loss_fn, task, classes, y),
        "n_classes": classes if task != "regression" else None,
        "logit_std": obs.logit_std,
    }

    init = _init_remedy(kinds)
    unscaled = _unscaled(obs.input) is not None
    findings = _nonfinite_finding(obs, checks, unscaled, init) + _input_findings(obs.input)
    findings += _class_findings(y, task, classes)
    if not findings or findings[0].kind != "nonfinite":
        findings += _gradient_findings(
            depth, weight_rows, any(k in SATURATING_BOUNDS for k in kinds), init
        )
        findings += _unit_findings(checks, unscaled, init)
        findings += _loss_findings(loss, unscaled, init)
    findings += comp.findings
    return Checkup(
        findings=findings,
        layers=checks,
        input=obs.input,
        loss=loss,
        depth=depth,
        complexity=comp,
        meta={
            "task": task,
            "batch_size": len(X),
            "seed": seed,
            "n_samples": n_samples,
            "dying_activations": sorted({k for k in kinds if k in DYING_ACTIVATIONS}),
        },
    )


def _is_weight_layer(module: nn.Module) -> bool:
    """A layer with a weight matrix or kernel (not a norm's scale) and the input it mixes."""
    if isinstance(module, WEIGHT_LAYER_TYPES):
        return True
    return any(p.dim() >= 2 for p in module.parameters(recurse=False) if p.requires_grad)


def _expected_loss(loss_fn: Any, task: str, n_classes: int, y: torch.Tensor) -> float | None:
    """The loss of a calibrated start: uniform predictions (ln classes), or predicting 0."""
    if task == "classification" and isinstance(loss_fn, nn.CrossEntropyLoss) and n_classes > 1:
        return math.log(n_classes)
    if task == "binary" and isinstance(loss_fn, nn.BCEWithLogitsLoss):
        return math.log(2)
    if task == "regression" and isinstance(loss_fn, nn.MSELoss):
        return float(y.float().pow(2).mean())
    return None


def checkup_experiment(experiment: Experiment, seed: int | None = None) -> Checkup:
    """Check an Experiment at initialisation: a fresh model from its builder, on the first
    training batch its run would see, with ``n_samples`` the size of its training set."""
    if not isinstance(experiment, Experiment):
        raise TypeError(
            f"checkup_experiment needs a deepdoctor.Experiment, got {type(experiment).__name__}"
        )
    exp = experiment if seed is None else experiment.replace(seed=seed)
    model = exp.build()
    batch = next(batches(exp.train, exp.batch_size, exp.seed))
    n_samples: int | None = None
    if not is_loader(exp.train):
        n_samples = len(exp.train[0])
    else:
        try:
            n_samples = len(exp.train.dataset)
        except TypeError:  # an iterable dataset has no length
            n_samples = None
    return checkup(
        model, batch, exp.loss_fn, n_samples=n_samples, n_classes=exp.n_classes, seed=exp.seed
    )

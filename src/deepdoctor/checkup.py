"""checkup: how trainable a model is at initialisation, from one forward and backward pass.

Most of what makes a deep network hard to train is visible before the first step:
activations that shrink or blow up through depth, gradients that fall geometrically towards
the input, units saturated or dead from the start, a loss at initialisation far from
ln(classes), inputs far from unit scale. A checkup measures these on one batch at a cost of
about one training step.

One measurement, one judgement
------------------------------
The checkup measures step 0 into a Trace with the Probe (the statistics of
``deepdoctor.stats``), and judges it with the same detectors, thresholds included, as
``diagnose`` and a Probe in your own loop (``deepdoctor.detectors.detect``): on the same
batch, ``checkup(model, (X, y))`` and ``diagnose(model, (X, y), steps=1,
batch_size=len(X))`` name the same problems among those visible at step 0. What only a
checkup adds sits on top: the trainable-depth fit and the model's complexity.

How the pass is made
--------------------
The model runs in training mode (as the first training step sees it: dropout on, batch norm
using batch statistics), with torch's RNG seeded by ``seed``. Gradients come from autograd
(``Probe.end_step(gradients_of=loss)``), so ``.grad`` is never written, and no optimizer
steps. Afterwards everything is put back: the train / eval mode of every submodule, buffers
(batch-norm running statistics), and the global RNG states of torch, numpy and Python.

The pass is read into Python once (one host sync): the norms, the loss, the logits' spread,
the labels' range (the loss sees them clamped to the outputs until then, and a wrong one is
named after the read) and the class counts; a second read only recounts a norm that was
tiny or non-finite in float32 (``tests/test_host_syncs.py``).

On a model sharded by FSDP2 (``fully_shard``), call it on every rank, each with its batch:
the norms are global (the gradient FSDP reduces over the ranks, from ``loss.backward()``;
``.grad`` is put back as it was), the same on every rank, as the Probe's are.

The trainable depth: the rate at which the gradient norm changes per weight layer (a
least-squares fit of log gradient norm against layer index, over the weight layers), and
from it the number of weight layers over which the gradient would change by a factor of
``DEPTH_SCALE_FACTOR``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .batch import Inputs
from .checks import check_int
from .complexity import Complexity, count, located_errors, untouched
from .detectors import coverage, detect
from .experiment import Experiment
from .findings import Finding, sort_findings
from .probe import Probe
from .results import Result
from .trace import Trace, json_ready
from .training import (
    LabelCheck,
    OptimizerSpec,
    as_tensors,
    batches,
    data_facts,
    default_loss,
    forward_loss,
    infer_task,
    is_loader,
    locate_nonfinite,
    targets_for,
    unpack_batch,
)

# "Barely learns": a gradient 10^6 times smaller than the output layer's moves its weights
# a millionth as fast, i.e. not at all within any ordinary training budget.
DEPTH_SCALE_FACTOR = 1e6
# Fewer weight layers than this give a slope from two points: no trend to report.
MIN_FIT_LAYERS = 3
# A slope within 2 standard errors of zero is layer-to-layer scatter, not a geometric trend.
MIN_TREND_T = 2.0


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
            "weight_layer": self.weight_layer,  # counted by the trainable depth
        }


@dataclass
class Checkup(Result):
    """A model's trainability at initialisation: findings and the measurements behind them.

    ``trace`` step 0 as the Probe measured it (what the findings were judged from);
    ``layers`` per parameter layer in forward order; ``input`` the batch's input scale;
    ``loss`` the loss at init against its calibrated value; ``depth`` the gradient's rate of
    change per weight layer and the trainable depth it implies; ``complexity`` the model's
    size and cost.
    """

    result_type = "checkup"

    findings: list[Finding]
    trace: Trace
    layers: list[LayerCheck]
    input: dict[str, float]
    loss: dict[str, Any]
    depth: dict[str, Any]
    complexity: Complexity
    meta: dict[str, Any] = field(default_factory=dict)
    coverage: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.update(
            json_ready(
                {
                    "layers": [layer.to_dict() for layer in self.layers],
                    "input": dict(self.input),
                    "loss": dict(self.loss),
                    "depth": dict(self.depth),
                }
            )
        )
        out["complexity"] = self.complexity.to_dict()
        if self.meta.get("experiment"):
            out["experiment"] = dict(self.meta["experiment"])
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


# -- the batch -------------------------------------------------------------------------------


def _batch(batch: Any) -> tuple[Any, torch.Tensor]:
    if is_loader(batch):
        try:
            first = next(iter(batch))
        except StopIteration:
            raise ValueError("the DataLoader yielded no batches; give it some data") from None
        batch = unpack_batch(first)
    elif isinstance(batch, dict):
        batch = unpack_batch(batch)
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        raise TypeError(
            "batch must be a tuple (X, y), ((inputs, ...), y), a dict with 'labels', or a "
            f"DataLoader, got {type(batch).__name__}"
        )
    return as_tensors(batch, "batch")


def _check_devices(model: nn.Module, X: Any, y: torch.Tensor) -> None:
    devices = {p.device for p in model.parameters()}
    if len(devices) > 1:
        return  # a model split over devices moves its own activations
    (device,) = devices
    xs = X.tensors() if isinstance(X, Inputs) else [X]
    for label, t in [*(("inputs", x) for x in xs), ("targets", y)]:
        if t.device != device:
            raise ValueError(
                f"the model's parameters are on {device} but the batch's {label} are on "
                f"{t.device}; move them to one device, e.g. X, y = X.to({str(device)!r}), "
                f"y.to({str(device)!r})"
            )


# -- the pass -------------------------------------------------------------------------------


def measure_step0(
    model: nn.Module,
    X: Any,
    y: torch.Tensor,
    loss_fn: Callable[..., torch.Tensor],
    task: str,
    own_loss: bool = False,
) -> tuple[Trace, float]:
    """Step 0 of ``model`` on ``(X, y)`` measured into a Trace by the Probe (every statistic
    sampled), without writing ``.grad``; and the spread of the initial logits. The caller
    restores modes, buffers and RNG (``complexity.untouched``)."""
    probe = Probe(model, every=1)
    probe.trace.facts.task = task
    labels: list[LabelCheck] = []
    with probe, located_errors(model):
        yt = targets_for(y, task)
        out, loss, _ = forward_loss(model, X, yt, loss_fn, task, own_loss, labels)
        if not loss.requires_grad:
            raise ValueError(
                "the loss does not depend on any trainable parameter, so there is no gradient "
                "to check; does the model's forward use its layers?"
            )
        # One host sync: the Probe's norms with the loss, the logits' spread, the labels'
        # range and the class counts.
        probe.record_loss(loss, targets=y)
        spread = [out.detach().float().std()] if out.numel() > 1 else []
        ends = [check.ends for check in labels]  # at most one: read last
        read = probe.end_step(gradients_of=loss, read=[*spread, *ends], with_targets=True)
        if labels:
            labels[0].check(read[-2:])
        logit_std = read[0] if spread else 0.0
    trace = probe.trace
    if not math.isfinite(trace.loss()[0]):
        trace.facts.nonfinite_at = {"step": 0, **locate_nonfinite(probe, X)}
    return trace, logit_std


def layer_checks(trace: Trace) -> list[LayerCheck]:
    """Per parameter layer (forward order), what step 0 of ``trace`` measured; activations
    that no parameter layer fed get a row of their own."""

    def first(table: Any, stat: str) -> list[float]:
        return table.array(stat)[0].tolist() if len(table) else [math.nan] * len(table.names)

    grad, weight = first(trace.layer, "grad_norm_weight"), first(trace.layer, "weight_norm")
    out_mean, out_std = first(trace.outputs, "out_mean"), first(trace.outputs, "out_std")
    dead, sat = first(trace.acts, "dead_frac"), first(trace.acts, "saturated_frac")
    by_source: dict[str, list[int]] = {}
    for j, aname in enumerate(trace.act_layers):
        by_source.setdefault(trace.act_sources.get(aname) or aname, []).append(j)

    def worst(name: str, values: list[float]) -> float:
        vals = [values[j] for j in by_source.get(name, []) if math.isfinite(values[j])]
        return max(vals) if vals else math.nan

    weights = set(trace.weight_layers)
    rows = [
        LayerCheck(
            name=n,
            type=trace.layer_types.get(n, "?"),
            out_mean=out_mean[i],
            out_std=out_std[i],
            grad_norm=grad[i],
            grad_to_weight=grad[i] / weight[i] if weight[i] > 0 else math.nan,
            dead_frac=worst(n, dead),
            saturated_frac=worst(n, sat),
            weight_layer=n in weights,
        )
        for i, n in enumerate(trace.layers)
    ]
    nan = math.nan
    rows += [
        LayerCheck(n, "activation", nan, nan, nan, nan, worst(n, dead), worst(n, sat), False)
        for n in by_source
        if n not in trace.layers
    ]
    return rows


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
        # least squares in closed form (np.polyfit's general solver costs 10x as much):
        # the log10 change per layer towards the output
        centred = x - x.mean()
        spread = float((centred**2).sum())
        slope = float((centred * (logs - logs.mean())).sum()) / spread
        intercept = float(logs.mean()) - slope * float(x.mean())
        rate = float(10.0**-slope)
        scatter = logs - (slope * x + intercept)
        stderr = math.sqrt(float((scatter**2).sum()) / max(1, len(x) - 2) / spread)
        trend = abs(slope) > MIN_TREND_T * stderr
        trainable = 1 + math.log10(DEPTH_SCALE_FACTOR) / float(abs(slope)) if trend else math.inf
    return {
        "grad_rate_per_layer": rate,
        "trainable_depth": trainable,
        "current_depth": current,
        "first_to_last_ratio": ratio,
    }


# -- the entry point -------------------------------------------------------------------------


def checkup(
    model: nn.Module,
    batch: Any,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    *,
    optimizer: OptimizerSpec = None,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool | str = False,
    n_samples: int | None = None,
    n_classes: int | None = None,
) -> Checkup:
    """Check ``model``'s trainability at initialisation on one batch, changing nothing.

    batch: ``(X, y)`` or a DataLoader (its first batch is used); use the batch size you
    train with, or pass ``batch_size`` to take the first that many examples. loss_fn:
    default cross-entropy for integer targets, MSE otherwise. seed: seeds dropout.
    optimizer, steps: what you plan to train with, as for ``diagnose``; recorded in the
    trace (the checkup takes no step). progress: accepted for symmetry with ``diagnose``
    (one pass has nothing to show). n_samples: the size of the training set (for
    parameters per sample). n_classes: the number of classes, when it differs from the
    model's output width.

    >>> import deepdoctor as dd
    >>> split = dd.data.load("digits")
    >>> chk = dd.checkup(dd.models.mlp(64, 10, depth=3, init="he"), split.train)
    >>> chk.healthy
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    seed = check_int("seed", seed, minimum=0)
    for name, value in (("n_samples", n_samples), ("n_classes", n_classes), ("steps", steps)):
        if value is not None:
            check_int(name, value, minimum=1)
    X, y = _batch(batch)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, minimum=1)
        X, y = X[:batch_size], y[:batch_size]
    return _checkup(
        model, X, y, loss_fn, seed=seed, steps=steps, n_samples=n_samples, n_classes=n_classes
    )


def _checkup(
    model: nn.Module,
    X: Any,
    y: torch.Tensor,
    loss_fn: Callable[..., torch.Tensor] | None,
    *,
    seed: int,
    steps: int | None,
    n_samples: int | None,
    n_classes: int | None,
    train: Any = None,
) -> Checkup:
    """``checkup`` on a checked batch. ``train``: the training set, when known, from which
    the class counts are taken (as diagnose takes them) instead of from the batch."""
    _check_devices(model, X, y)
    task = infer_task(y, loss_fn)
    own_loss = loss_fn is None
    loss_fn = loss_fn if loss_fn is not None else default_loss(y)
    with untouched(model):
        _seed(seed, model)
        model.train()
        trace, logit_std = measure_step0(model, X, y, loss_fn, task, own_loss)
        comp = count(model, X[:2], n_samples=n_samples)
    facts = trace.facts
    if train is not None:
        for key, value in data_facts(train, loss_fn, facts.n_classes, None).items():
            setattr(facts, key, value)
    if n_classes is not None and task == "classification":
        facts.n_classes = n_classes
        facts.chance_loss = math.log(n_classes) if n_classes > 1 else None
    facts.steps_planned, facts.batch_size, facts.seed = steps, len(X), seed
    return _result(X, y, trace, comp, loss_fn, logit_std, n_samples)


def _seed(seed: int, model: nn.Module) -> None:
    """``torch.manual_seed`` for the pass. For a CPU model with no GPU in use, only the CPU
    generator: ``torch.manual_seed`` also queues a seed for every accelerator backend not yet
    started (formatting a stack trace for each, ~75 us, a twentieth of a depth-10 checkup's
    extra cost), which would reseed a GPU started after the checkup, outside its
    ``untouched`` block."""
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    if on_cpu and not torch.cuda.is_initialized():
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)


def _result(
    X: Any,
    y: torch.Tensor,
    trace: Trace,
    comp: Complexity,
    loss_fn: Any,
    logit_std: float,
    n_samples: int | None,
) -> Checkup:
    """The Checkup of a measured step 0: the detectors' findings, then what only a checkup
    adds (complexity, trainable depth)."""
    checks = layer_checks(trace)
    depth = fit_depth([c.grad_norm for c in checks if c.weight_layer])
    facts = trace.facts
    inputs = trace.inputs.array if len(trace.inputs) else None
    loss = {
        "value": float(trace.loss()[0]),
        "expected": _expected_loss(loss_fn, facts.task or "", facts.n_classes or 0, y),
        "n_classes": facts.n_classes if facts.task != "regression" else None,
        "logit_std": logit_std,
    }
    return Checkup(
        findings=sort_findings(detect(trace) + comp.findings),
        trace=trace,
        coverage=coverage(trace),
        layers=checks,
        input={
            s: float(inputs(s)[0, 0]) if inputs is not None else math.nan
            for s in trace.inputs.stats
        },
        loss=loss,
        depth=depth,
        complexity=comp,
        meta={
            "task": facts.task,
            "batch_size": len(X),
            "seed": facts.seed,
            "n_samples": n_samples,
            "dying_activations": sorted(
                {k for k in trace.act_kinds.values() if k in ("relu", "relu6")}
            ),
        },
    )


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
    chk = _checkup(
        model,
        *batch,
        exp.loss_fn,
        seed=exp.seed,
        steps=exp.steps,
        n_samples=n_samples,
        n_classes=exp.n_classes,
        train=exp.train,
    )
    # The page's title and header name the experiment, as a Diagnosis's do.
    chk.meta["experiment"] = {
        "name": exp.name,
        "description": exp.description,
        "seed": exp.seed,
        "batch_size": exp.batch_size,
    }
    return chk

"""Probe: hooks that measure a model while it trains and write scalars into a Trace.

The Probe observes and never changes training: every hook reads detached tensors under
``torch.no_grad()`` and returns nothing, so with and without it the same seed gives the same
weights, bit for bit (``tests/test_probe.py`` checks this).

How it knows a step ended
-------------------------
A step ends when the optimizer steps. The Probe registers ``register_step_pre_hook`` /
``register_step_post_hook`` on the optimizer you pass, or, when you pass none, the global
optimizer-step hooks of ``torch.optim``, filtered to optimizers that own this model's
parameters. Gradients and the weight norm are read just before the update (so a row holds
the weights and the gradient computed at them): in the step pre-hook, or, when ``step`` is
given a closure (Lightning, LBFGS), as soon as the closure has returned, since it is the
closure that runs the backward pass. Gradients accumulated over several backward passes
before a step are read once, summed, as the optimizer sees them. The update-to-weight ratio
compares the weights before and after the update. A loop that updates weights by hand calls
``probe.end_step()`` after its update instead (then no update ratio is recorded).

Mixed precision
---------------
Under autocast the parameters and their gradients stay float32, so nothing changes. With a
``GradScaler``, ``scaler.step(opt)`` unscales the gradients before the optimizer steps, so
the Probe reads them unscaled; a step the scaler skips (Inf or NaN gradients) never reaches
the optimizer and gets no row. Pass ``Probe(model, scaler=scaler)`` to count those steps
(from the falls of the scale, read once per step) into ``trace.facts.skipped_steps``,
``loss_scale_start`` and ``loss_scale_min``, which the nonfinite detector judges.

Several processes
-----------------
Given a ``DistributedDataParallel`` model, the Probe watches the module it wraps, so layers
carry the model's own names (no ``module.`` prefix). DDP averages the gradients over the
ranks before the step, so every rank reads the same norms; ``record_loss`` averages the
loss over the ranks (one all-reduce: call it on every rank), so every rank's trace holds
the same values, and ``probe.save(path)`` writes it on rank 0 only.

Sharded parameters (FSDP2's ``fully_shard``, whose parameters and gradients are DTensors):
each rank holds a shard, so every norm is global: each rank's float64 sums of squares of
its shards, all-reduced in one collective for all the norms of a step (a sampled step's
update norms take a second), then square-rooted. A part that several ranks hold whole (a
replicated DTensor, or a parameter left unsharded) counts once. Every rank records the same
values; the loss is averaged over the ranks as under DDP. Create the Probe after
``fully_shard`` (on the sharded model), in a process group. The pretrained layers' drift
(``pretrained=``) is global the same way: each rank copies its shards. ``end_step(
gradients_of=loss)`` (a checkup) runs ``loss.backward()`` instead of autograd's gradients
(the forward used FSDP's gathered copies, so only FSDP's reduction reaches the sharded
parameters), reads the sharded ``.grad`` and puts it back as it was. Activation statistics
are of each rank's own batch.

One host sync a step
--------------------
Everything the Probe measures is read into Python at once, with the step's gradient and
weight norms (in the step pre-hook, or after the closure): the sampled forward's statistics,
the loss passed to ``record_loss`` as a tensor (when recorded after the step, it is read with
the next step's norms), a sampled step's update norms and the pretrained layers' drift (also
with the next step's). What still waits at the end is read when ``probe.trace`` is. Counted
in ``tests/test_host_syncs.py`` (on a CPU, calls that bring tensor values into Python). More
reads only: with ``scaler=``, the loss scale (once a step); on the step a norm first falls
below ``stats.TINY_NORM``, its float64 recount; on an unsampled step whose gradients are not
finite, the weight norms; a forward begun by ``begin_forward`` that
has not ended when the gradients are read, its own read.

The loss is not visible to module hooks: call ``probe.record_loss(loss)`` once per step
(before or after ``optimizer.step()``); without it the loss detectors have nothing to read.

What is recorded, and when
--------------------------
Every step: the weight- and bias-gradient norms of every module that owns trainable
parameters (small tensors of one shape stacked, each stack one norm call; one host sync).
Its weight norm is measured on the sampled steps, and on any step whose gradients are NaN or
Inf (a weight turns non-finite only in an update, and the next forward then makes the loss
and the gradients non-finite), and held in between: weights move by an update ratio of
about 1e-3 a step, and reading them too would double the step's read (a 50 x 512 MLP: 2 x
13M floats, ~5 ms of a 130 ms step). ``every=1`` measures it on every step, and so does a
sharded (FSDP) model, whose norms come from one collective either way. A parameter
whose name contains ``bias`` counts as a bias, every other one as a weight; the weight norm
and the update ratio are taken over all of the layer's trainable parameters, bias included.
Frozen parameters (``requires_grad=False``) are skipped and listed in
``trace.facts.frozen_parameters`` (their modules, when nothing of them trains, in
``trace.facts.frozen_layers``).

Fine-tuning: ``Probe(model, pretrained=["encoder"])`` (module names, or the state dict that
was loaded) marks the pretrained part; the Probe keeps a copy of its trainable weights from
the first step and writes each layer's drift ||W - W_0|| / ||W_0|| after
``pretrained.DRIFT_STEPS`` steps into ``trace.facts.pretrained_drift`` (read with the next
step's norms), then drops the copy. ``detectors.transfer`` judges it.

Every ``every``-th step (default 16, and always step 0): statistics of activations, outputs,
inputs, and the update-to-weight ratio. These need a pass over every activation tensor or a
copy of the weights, so sampling keeps the overhead small; ``every=1`` records them all.
The forward is observed (one global module hook, ``stats.ForwardWalk``) only on sampled steps.

Overhead, measured on 2 shared CPU cores (CPU time per step against the same loop without
the Probe, plain SGD; ``benchmarks/probe_overhead.py``, latest in docs/benchmarks.md): with
the default ``every=16``, +4% for a 50 x 512 MLP on batches of 128, +1% for a ResNet-style
CNN of 20 conv layers on 32x32 images, +3% for a 6 x 256 transformer on sequences of 128;
with ``every=1`` +25%, +8%, +7%. Most of the default's cost is the per-step norms, one read
of every weight and every gradient. Small models pay more, because part of the cost is per
tensor and per module rather than per number: a 50 x 64 sigmoid MLP on batches of 64, whose
step is 5-8 ms, +18% on one thread and +9% on torch's two (``every=1`` +84%, +66%; it was
+28% before the norms of its small tensors were read in stacks, ``stats.norms_and``, and
+27% before a sampled forward's small outputs were measured in stacks, ``stats.WalkRows``);
a 4 x 512 ReLU MLP on batches of 256, +2% (+16%).
A tensor whose norm was tiny the step before is read in float64 at once, so a vanishing
layer costs no second pass.

Activation statistics come from activation modules (``nn.ReLU``, ``nn.Sigmoid`` ...) and, for
activations applied as functions (``F.relu``, ``torch.sigmoid``), from what the next
parameterised layer receives (a column ``<layer>.input``, its family told by the values).
The rules for dead and saturated units, and every other
statistic, are those of ``deepdoctor.stats``, which the checkup uses too.
"""

from __future__ import annotations

import itertools
import math
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import optimizer as _optimizer_module

from .pretrained import DRIFT_STEPS, DriftMeter, PretrainedSpec, frozen_layers, pretrained_layers
from .stats import (
    CHANNEL_FIRST_TYPES,
    ROOT_NAME,
    AutogradNorms,
    ForwardWalk,
    ParameterIndex,
    StackedCopies,
    TargetTally,
    WalkRows,
    activation_modules,
    forward_ordered,
    is_dtensor,
    is_weight_layer,
    output_tensor,
    parameter_layers,
    recount_tiny,
)
from .trace import RunFacts, Trace

# Sample the costly statistics every 16th step: with every=1 they triple the time of a
# small deep MLP's step; every 16th step they add a few percent on top of the per-step norms.
DEFAULT_EVERY = 16

__all__ = ["CHANNEL_FIRST_TYPES", "DEFAULT_EVERY", "ROOT_NAME", "Probe"]


def _unwrapped(model: nn.Module) -> tuple[nn.Module, int, bool]:
    """The module a DistributedDataParallel wrapper holds (so layers are named as in the
    model, without the wrapper's ``module.`` prefix), the number of processes, and whether
    parameters are sharded over them (FSDP2's ``fully_shard``: DTensor parameters)."""
    sharded = any(is_dtensor(p) for p in model.parameters())
    if sharded:
        return model, dist.get_world_size(), True  # a DTensor exists only inside a group
    if not isinstance(model, DistributedDataParallel):
        return model, 1, False
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "this DistributedDataParallel model's process group is not initialised; call "
            "torch.distributed.init_process_group (torchrun sets up its environment) before "
            "creating the Probe, or give the Probe the unwrapped model"
        )
    return model.module, dist.get_world_size(), False


def _type_name(module: nn.Module) -> str:
    """The layer's class name; under FSDP2 its own, not the ``FSDPLinear`` it is made into."""
    name = type(module).__name__
    fsdp = type(module).__module__.startswith("torch.distributed") and name.startswith("FSDP")
    return name[len("FSDP") :] if fsdp else name


def _tensors(inputs: Any) -> list[torch.Tensor]:
    """The tensors in a forward's inputs: a tensor, a sequence or a mapping of inputs."""
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    if isinstance(inputs, dict):
        inputs = list(inputs.values())
    if isinstance(inputs, tuple | list):
        return [t for i in inputs for t in _tensors(i)]
    return [t for t in getattr(inputs, "tensors", lambda: [])() if isinstance(t, torch.Tensor)]


class Probe:
    """Record per-layer statistics of ``model`` into ``probe.trace`` while it trains.

    Use it as a context manager around your own loop::

        with dd.Probe(model) as probe:
            for x, y in loader:
                loss = loss_fn(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()              # the Probe sees the step end here
                probe.record_loss(loss, targets=y)
        findings = dd.detect(probe.trace)

    Leaving the ``with`` block removes every hook.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        every: int = DEFAULT_EVERY,
        activations: bool = True,
        scaler: Any = None,
        pretrained: PretrainedSpec = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Probe needs an nn.Module, got {type(model).__name__}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a whole number >= 1, got {every!r}")
        model, self.world_size, sharded = _unwrapped(model)
        self.model = model
        self.optimizer = optimizer
        self.every = every
        self.activations = activations
        self.scaler = scaler  # a torch.amp.GradScaler: its skipped steps are counted
        self._scale: float | None = None
        self._layers, frozen = parameter_layers(model)
        self._acts = activation_modules(model)
        self._index = ParameterIndex(self._layers)
        self._index.sharded = sharded
        self._trace = Trace(
            list(self._layers),
            {n: _type_name(m) for n, m in self._layers.items()},
            list(self._acts),
            {n: kind for n, (_, kind) in self._acts.items()},
            {n: None for n in self._acts},
            weight_layers=[n for n, m in self._layers.items() if is_weight_layer(m)],
            facts=RunFacts(
                frozen_parameters=frozen,
                frozen_layers=frozen_layers(model),
                pretrained_layers=pretrained_layers(model, pretrained),
                every=every,
            ),
        )
        tuned = set(self._trace.facts.pretrained_layers or ())
        self._drift = DriftMeter(
            {n: [p for _, p in ps] for n, ps in self._index.layer_params.items() if n in tuned},
            sharded,
        )
        self._tally = TargetTally()
        # optimizer -> (its parameter lists' ids and lengths, whether it steps this model)
        self._owned: weakref.WeakKeyDictionary[torch.optim.Optimizer, tuple[Any, bool]] = (
            weakref.WeakKeyDictionary()
        )
        self._handles: list[Any] = []
        self._step = 0
        self._forward_in_step = False
        self._order_fixed = False
        self._walk: ForwardWalk | None = None  # the sampled forward's observer
        self._walk_rows = WalkRows()  # its buffers, kept from walk to walk
        self._outside = False  # the walk was begun by begin_forward, not the root forward
        self._walked: ForwardWalk | None = None  # ... once that forward has run
        self._prediction: torch.Size | None = None  # the shape of this step's prediction
        self._batch_len: int | None = None
        self._pending_loss: float | None = None
        # Tensors measured on the device and read at the step's one host sync, each with
        # what to do with its values: a sampled step's update norms wait for the next step's
        # read (or the trace's), a loss for the read after it was recorded (see _read_gradients)
        self._waiting: list[tuple[torch.Tensor, Callable[[list[float]], None]]] = []
        self._loss_waiting: tuple[torch.Tensor, int] | None = None  # the loss, for its step
        self._walk_values: list[float] | None = None  # the walk's statistics, read
        self._grad_row: dict[str, list[float]] | None = None
        self._grads_nonfinite = False
        self._snapshot: StackedCopies | None = None
        self._snapshot_buffers: StackedCopies | None = None
        self._lr: float = math.nan
        self._active = False

    @property
    def trace(self) -> Trace:
        """What the Probe recorded so far (the target tally is brought up to date, and the
        values still on the device are read)."""
        self._flush()
        self._note_scale()
        if self._tally.task is not None:
            for key, value in self._tally.facts().items():
                setattr(self._trace.facts, key, value)
        return self._trace

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Probe:
        self.attach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def attach(self) -> None:
        if self._active:
            return
        self._note_scale()  # the scale before any step, so a first skipped step counts
        h = self._handles
        h.append(self.model.register_forward_pre_hook(self._on_root_forward, with_kwargs=True))
        h.append(self.model.register_forward_hook(self._on_root_output))
        if self.optimizer is not None:
            h.append(self.optimizer.register_step_pre_hook(self._on_step_pre))
            h.append(self.optimizer.register_step_post_hook(self._on_step_post))
        else:
            ref = weakref.ref(self)

            def pre(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
                probe = ref()
                if probe is not None and probe._owns(opt):
                    return probe._on_step_pre(opt, args, kwargs)
                return None

            def post(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
                probe = ref()
                if probe is not None and probe._owns(opt):
                    probe._on_step_post(opt, args, kwargs)

            h.append(_optimizer_module.register_optimizer_step_pre_hook(pre))
            h.append(_optimizer_module.register_optimizer_step_post_hook(post))
        self._active = True

    def detach(self) -> None:
        self._stop_walk()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._snapshot_buffers = None
        self._walk_rows = WalkRows()
        self._active = False

    def _owns(self, opt: torch.optim.Optimizer) -> bool:
        # Runs twice at every step of every optimizer in the process: the answer is kept
        # while the optimizer's parameter lists are the same lists of the same lengths.
        groups = tuple((id(g["params"]), len(g["params"])) for g in opt.param_groups)
        known = self._owned.get(opt)
        if known is not None and known[0] == groups:
            return known[1]
        ids = map(id, itertools.chain.from_iterable(g["params"] for g in opt.param_groups))
        owns = not self._index.ids.isdisjoint(ids)
        self._owned[opt] = (groups, owns)
        return owns

    # -- what the user (or the training loop) tells the probe ----------------------------

    @property
    def step(self) -> int:
        """Number of steps recorded so far."""
        return self._step

    @property
    def sampling(self) -> bool:
        """True on steps where the costly statistics are recorded."""
        return self._step % self.every == 0

    def record_loss(self, loss: torch.Tensor | float, targets: torch.Tensor | None = None) -> None:
        """Tell the probe this step's training loss, and optionally the batch's targets.

        Called after ``optimizer.step()`` with no forward since, it belongs to the step just
        recorded; otherwise to the step in progress. ``targets`` (the batch's labels or
        regression targets) let the Probe record the task, the classes and their counts, so
        that ``dd.detect`` can judge the loss at initialisation and the class balance as
        ``diagnose`` does.
        """
        if targets is not None:
            self._record_targets(targets)
        after = not self._forward_in_step and self._trace.n_steps > 0
        step = self._step - 1 if after else self._step
        if isinstance(loss, torch.Tensor) or self.world_size > 1:
            # kept on the device, and read with the next norms or when the trace is read
            self._loss_waiting = (self._loss_tensor(loss), step)
        else:
            self._loss_waiting = None
            self._put_loss(step, float(loss))

    def _loss_tensor(self, loss: torch.Tensor | float) -> torch.Tensor:
        """The loss as a float64 scalar on the device; under torch.distributed the mean over
        the ranks (one all-reduce: call record_loss on every rank), so every rank records
        the same."""
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise ValueError(
                    f"record_loss takes the batch's loss as one number, got a tensor of shape "
                    f"{tuple(loss.shape)}; reduce it first (loss.mean())"
                )
            t = loss.detach().reshape(()).to(torch.float64, copy=True)
        else:
            device = self._index.params[0].device if self._index.params else None
            t = torch.tensor(float(loss), dtype=torch.float64, device=device)
        if self.world_size > 1:
            dist.all_reduce(t)
            t = t / self.world_size
        return t

    def _put_loss(self, step: int, value: float) -> None:
        """The loss of ``step``: into its row once it has one (the last), else kept for it."""
        if self._trace.n_steps > step:
            self._set_last("loss", value)
            self._set_last("nonfinite_loss", float(not math.isfinite(value)))
        else:
            self._pending_loss = value

    def save(self, path: str | Path) -> Path | None:
        """Write the trace to ``path`` (``Trace.save``), on rank 0 only under
        ``torch.distributed``: every rank records the same values. None on other ranks."""
        if self.world_size > 1 and dist.get_rank() != 0:
            return None
        return self.trace.save(path)

    def _record_targets(self, targets: torch.Tensor) -> None:
        if not isinstance(targets, torch.Tensor):
            raise TypeError(
                f"record_loss(targets=...) takes the batch's targets as a tensor, got "
                f"{type(targets).__name__}"
            )
        if self._batch_len is not None and targets.dim() and len(targets) != self._batch_len:
            raise ValueError(
                f"record_loss got {len(targets)} targets, but the model's last forward saw a "
                f"batch of {self._batch_len} examples; pass the targets of the batch the loss "
                "was computed on"
            )
        if self._tally.task is None and self._trace.facts.task is not None:
            self._tally.task = self._trace.facts.task
        self._tally.add(targets, self._prediction)

    def record_eval(self, step: int | None = None, **metrics: float) -> None:
        """Record evaluation metrics (the names in ``trace.EVAL_STATS``)."""
        unknown = set(metrics) - set(self._trace.evals.stats)
        if unknown:
            raise ValueError(
                f"unknown eval metrics {sorted(unknown)}; use {', '.join(self._trace.evals.stats)}"
            )
        self._trace.evals.append(
            self._step if step is None else step, {k: [v] for k, v in metrics.items()}
        )

    def end_step(
        self,
        gradients_of: torch.Tensor | None = None,
        *,
        read: Sequence[torch.Tensor] = (),
        with_targets: bool = False,
    ) -> list[float]:
        """Close the current step by hand, for loops that do not call a torch optimizer.

        gradients_of: a loss whose gradients to measure by autograd instead of reading
        ``.grad``; nothing is written to ``.grad`` (this is how a checkup measures step 0
        without changing the model). read: tensors of your own to read in the step's host
        sync; their values (flattened, in order) are returned. with_targets: read the
        targets' tally (classes and their counts, from ``record_loss(targets=...)``) in that
        sync too, so that reading the trace right after needs none (a checkup's one step).
        """
        values: list[float] = []
        mine: list[tuple[torch.Tensor, Callable[[list[float]], None]]]
        mine = [(t.detach(), values.extend) for t in read]
        tally = self._tally.pending() if with_targets else None
        if tally is not None:
            mine.append((tally, self._tally.keep))
        if self._grad_row is None and gradients_of is not None and self._index.sharded:
            self._read_gradients_by_backward(gradients_of, mine)
        elif self._grad_row is None:
            grad_norms = (
                AutogradNorms(gradients_of, self._index.params)
                if gradients_of is not None
                else None
            )
            self._read_gradients(grad_norms, mine)
        elif mine:
            self._waiting += mine
            self._flush()
        self._finish_step()
        return values

    def begin_forward(self, inputs: Any = None) -> None:
        """A training forward begins that may not pass through ``model.forward`` (a
        LightningModule whose ``training_step`` calls its layers): observe it from here
        until ``end_forward()``. ``inputs``: the batch's inputs (a tensor, or anything whose
        first tensor is the input), for the input statistics and the batch size. The
        integrations call these two; a loop of your own needs neither."""
        first = next(iter(_tensors(inputs)), None)
        self._begin(first)
        self._outside = self._walk is not None

    def end_forward(self) -> None:
        """The forward begun by ``begin_forward`` is over (its backward begins)."""
        if self._outside:
            self._walked = self._walk
            self._walk = None
            self._stop_walk_of(self._walked)
        self._outside = False

    def _set_last(self, stat: str, value: float) -> None:
        self._trace.steps.set_value(stat, -1, 0, value)

    # -- hooks ---------------------------------------------------------------------------

    def _on_root_forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: Any) -> None:
        if self._outside:
            return  # observed from begin_forward() to end_forward()
        self._stop_walk()
        inputs = [*args, *kwargs.values()]
        self._begin(next((a for a in inputs if isinstance(a, torch.Tensor)), None))

    def _begin(self, x: torch.Tensor | None) -> None:
        # Evaluation passes (no grad, or eval mode) are not training steps.
        if not (torch.is_grad_enabled() and self.model.training):
            return
        first = not self._forward_in_step
        self._forward_in_step = True
        if self._step == 0:
            self._drift.begin()
        if first:
            self._batch_len = len(x) if x is not None and x.dim() else None
        if first and self.sampling:
            acts = self._acts if self.activations else {}
            self._walk = ForwardWalk(self._layers, acts, self._walk_rows).__enter__()
            self._walk.record_input(x)

    def _on_root_output(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._walk is not None and not self._outside:
            self._walked = self._walk
            self._stop_walk()
        if torch.is_grad_enabled() and self.model.training:
            pred = output_tensor(output)
            self._prediction = pred.shape if pred is not None else None

    def _stop_walk(self) -> None:
        if self._walk is not None:
            self._walk.__exit__()
            self._walk = None

    @staticmethod
    def _stop_walk_of(walk: ForwardWalk | None) -> None:
        if walk is not None:
            walk.__exit__()

    def _on_step_pre(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
        self._note_scale()
        if self._step == 0:
            self._drift.begin()  # a closure's forward runs after this hook
        try:
            self._lr = float(opt.param_groups[0]["lr"])
        except (KeyError, IndexError, TypeError, ValueError):
            self._lr = math.nan
        # args are step()'s own: the optimizer itself first, then the closure if positional
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if not callable(closure):
            self._read_gradients()
            self._snapshot_if_sampling()
            return None

        # A closure (Lightning, LBFGS) runs the forward and backward inside step(): the
        # gradients of this step exist only once it has returned, so read them there. LBFGS
        # calls it again at trial weights; the first call's gradients are the step's own, and
        # the weights are still the step's own when it returns. (An optimizer that never
        # calls the closure gets its gradients read after the step, and no update ratio.)
        def read_after(*a: Any, **k: Any) -> Any:
            result = closure(*a, **k)
            if self._grad_row is None:
                self._read_gradients()
                self._snapshot_if_sampling()
            return result

        if "closure" in kwargs:
            return args, {**kwargs, "closure": read_after}
        return (args[0], read_after, *args[2:]), kwargs

    def _note_scale(self) -> None:
        """Count the steps the loss scaler skipped since the last look, from the falls of
        its scale (each skipped step multiplies it by the backoff factor; one host sync)."""
        scaler = self.scaler
        if scaler is None or not scaler.is_enabled():
            return
        scale = float(scaler.get_scale())
        facts = self._trace.facts
        if self._scale is None:
            facts.skipped_steps, facts.loss_scale_start = 0, scale
        elif scale < self._scale:
            fall = math.log(self._scale / scale) / -math.log(scaler.get_backoff_factor())
            facts.skipped_steps = (facts.skipped_steps or 0) + round(fall)
        facts.loss_scale_min = min(scale, facts.loss_scale_min or scale)
        self._scale = scale

    def _read_gradients(self, grad_norms: Any = None, also: Sequence[Any] = ()) -> None:
        """The step's one host sync: the gradient and weight norms, read together with what
        waits on the device (the previous sampled step's update norms, the last loss
        recorded, the pretrained layers' drift) and this step's forward statistics, when
        its walk is over."""
        parts = [*self._take_waiting(), *also]
        walk = self._walked
        flat = walk.flat() if walk is not None else None
        if flat is not None:
            parts.append((flat, self._keep_walk_values))
        # The weight norms on sampled steps only, and held between them: they change slowly,
        # and reading them doubles the step's read (13M weights: ~5 ms of a 130 ms step).
        self._grad_row, self._grads_nonfinite, values = self._index.read(
            grad_norms=grad_norms, also=[t for t, _ in parts], weights=self.sampling
        )
        self._deliver(parts, values)

    def _read_gradients_by_backward(self, loss: torch.Tensor, also: Sequence[Any]) -> None:
        """``end_step(gradients_of=loss)`` for sharded parameters. Their forward used the
        gathered copies FSDP makes, so autograd never reaches the sharded parameters
        themselves; FSDP reduces the gradients into their ``.grad`` in the backward pass. So
        ``loss.backward()`` runs, the sharded gradients are read (global norms), and every
        ``.grad`` is put back as it was."""
        params = self._index.params
        kept = [p.grad for p in params]
        try:
            for p in params:
                p.grad = None
            loss.backward()
            self._read_gradients(None, also)
        finally:
            for p, grad in zip(params, kept, strict=True):
                p.grad = grad

    def _keep_walk_values(self, values: list[float]) -> None:
        self._walk_values = values

    def _take_waiting(self) -> list[tuple[torch.Tensor, Callable[[list[float]], None]]]:
        parts, self._waiting = self._waiting, []
        if self._loss_waiting is not None:
            loss, step = self._loss_waiting
            self._loss_waiting = None
            parts.append((loss, lambda v: self._put_loss(step, v[0])))
        return parts

    @staticmethod
    def _deliver(
        parts: list[tuple[torch.Tensor, Callable[[list[float]], None]]], values: list[float]
    ) -> None:
        k = 0
        for t, put in parts:
            put(values[k : k + t.numel()])
            k += t.numel()

    def _flush(self) -> None:
        """Read what still waits on the device (the last loss, the last update norms)."""
        parts = self._take_waiting()
        if parts:
            device = parts[0][0].device
            flat = [t.reshape(-1).to(device, torch.float64) for t, _ in parts]
            self._deliver(parts, torch.cat(flat).tolist())

    def _on_step_post(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._grad_row is None:  # a closure the optimizer never called
            self._read_gradients()
        if self._snapshot is not None:
            self._measure_updates(self._snapshot)
            self._snapshot = None
        self._finish_step()

    # -- measurement ---------------------------------------------------------------------

    def _snapshot_if_sampling(self) -> None:
        # After the step's read: that read brings back the last sampled step's update norms,
        # and with them the last use of the buffers the snapshot overwrites.
        if self.sampling:
            self._snapshot = self._take_snapshot()

    def _take_snapshot(self) -> StackedCopies:
        """The weights before the update, copied into buffers kept between sampled steps.

        Fresh buffers cost more than the copy: a large new allocation comes from the
        operating system as untouched pages, and faulting them in is slow (profiling a
        50 x 512 MLP's sampled step, 13M weights: 54 ms to clone them, 11 ms to copy them
        into kept buffers). The buffers hold one copy of the trainable weights from the
        first sampled step to ``detach()``; a sampled step needs that copy anyway, so the
        peak memory is the same. Small weights of one shape are copied into the rows of one
        stack (``stats.StackedCopies``): their update norms are then one reduction.
        """
        params = self._index.local()
        buf = self._snapshot_buffers
        if buf is None or not buf.fit(params):
            buf = self._snapshot_buffers = StackedCopies(params)
        with torch.no_grad():
            torch._foreach_copy_(buf.copies, params)
        return buf

    def _measure_updates(self, before: StackedCopies) -> None:
        """||after - before|| per parameter, on the device; the next read brings the norms
        back and writes this step's update ratios (over ||before||, the weight norm read for
        this step's row). ``before`` is the snapshot taken just before the update, and is
        overwritten (in place: no second copy of the weights)."""
        sharded = self._index.sharded
        copies = before.copies
        order: list[int] | None = None
        with torch.no_grad():
            torch._foreach_sub_(copies, self._index.local())
            if sharded:  # squares summed over the ranks (one collective)
                moved = self._index.global_squares(copies, range(len(copies)))
            else:
                moved, order = before.norms()
                moved = moved.float()  # float32, as always (and not the stack's reused vector)
        step, weight_norm = self._step, list((self._grad_row or {}).get("weight_norm", []))
        layer_of, names = list(self._index.layer_of), list(self._index.layer_params)

        def put(values: list[float]) -> None:
            if not sharded:
                if order is not None:
                    values = [values[k] for k in order]
                recount_tiny(copies, values)  # as stats.norms does: float32 underflows
                values = [v * v for v in values]
            dsq = [0.0] * len(names)
            for i, v in zip(layer_of, values, strict=True):
                dsq[i] += v
            ups = {
                name: math.sqrt(dsq[i]) / weight_norm[i]
                if i < len(weight_norm) and weight_norm[i] > 0
                else math.nan
                for i, name in enumerate(names)
            }
            t = self._trace
            t.updates.append(step, {"update_ratio": [ups.get(n, math.nan) for n in t.layers]})

        self._waiting.append((moved, put))

    def _fix_layer_order(self, walk: ForwardWalk | None) -> None:
        """Put layers in the order the forward pass ran them (once, before the first row)."""
        if self._order_fixed or walk is None:
            return
        self._order_fixed = True
        registered = list(self._layers)
        ordered = forward_ordered(registered, walk.result.order)
        position = {n: i for i, n in enumerate(registered)}
        perm = [position[n] for n in ordered]
        self._layers = {n: self._layers[n] for n in ordered}
        self._index.reorder(ordered)
        if self._grad_row is not None:
            self._grad_row = {k: [v[i] for i in perm] for k, v in self._grad_row.items()}
        seen = walk.result.act_order
        functional = list(walk.result.functional)
        seen_set = set(seen)
        acts = seen + [a for a in self._acts if a not in seen_set] + functional
        t = self._trace
        for name in functional:
            t.act_kinds[name] = walk.result.functional[name]
            t.act_sources[name] = walk.result.act_sources.get(name)
        t.layers = ordered
        weights = set(t.weight_layers)
        t.weight_layers = [n for n in ordered if n in weights]
        t.act_layers = acts
        for table in (t.layer, t.outputs, t.updates):
            table.names = ordered
        t.acts.names = acts

    def _finish_step(self) -> None:
        if self._outside:  # no end_forward() before the step: the walk ends here
            self.end_forward()
        walk, self._walked = self._walked, None
        self._stop_walk()
        # read with the step's norms, or here when its walk ended after them (begin_forward)
        seen = walk.read(self._walk_values) if walk is not None else None
        self._walk_values = None
        self._fix_layer_order(walk)
        t = self._trace
        row = self._grad_row or {}
        loss = self._pending_loss if self._pending_loss is not None else math.nan
        grads = row.get("grad_norm_weight", []) + row.get("grad_norm_bias", [])
        present = [g for g in grads if not math.isnan(g)]
        total = math.sqrt(sum(g * g for g in present)) if present else math.nan
        t.steps.append(
            self._step,
            {
                "loss": [loss],
                "lr": [self._lr],
                "grad_norm_total": [total],
                "nonfinite_loss": [
                    float(self._pending_loss is not None and not math.isfinite(loss))
                ],
                "nonfinite_grad": [float(self._grads_nonfinite)],
                "nonfinite_weight": [
                    float(any(not math.isfinite(w) for w in row.get("weight_norm", [])))
                ],
            },
        )
        t.layer.append(self._step, row)
        if seen is not None:
            self._record_walk(seen)
        moved = self._drift.measure() if self._step + 1 == DRIFT_STEPS else None
        if moved is not None:  # read with the next step's norms
            self._waiting.append((moved, self._put_drift))
        self._pending_loss = None
        self._grad_row = None
        self._grads_nonfinite = False
        self._forward_in_step = False
        self._step += 1

    def _put_drift(self, values: list[float]) -> None:
        self._trace.facts.pretrained_drift = self._drift.drift(values)
        self._trace.facts.drift_steps = DRIFT_STEPS

    def _record_walk(self, seen: Any) -> None:
        """Write a sampled forward's statistics (a ``stats.WalkResult``) into the Trace."""
        t = self._trace
        for aname, src in seen.act_sources.items():
            if aname in t.act_sources and t.act_sources[aname] is None:
                t.act_sources[aname] = src
        if seen.input is not None:
            t.inputs.append(
                self._step, {s: [v] for s, v in zip(t.inputs.stats, seen.input, strict=True)}
            )
        if seen.outputs:
            nan2 = [math.nan, math.nan]
            t.outputs.append(
                self._step,
                {
                    "out_mean": [seen.outputs.get(n, nan2)[0] for n in t.layers],
                    "out_std": [seen.outputs.get(n, nan2)[1] for n in t.layers],
                },
            )
        # a functional activation counts only while its values show the family first seen
        acts = {
            a: v
            for a, v in seen.acts.items()
            if a not in seen.functional or seen.functional[a] == t.act_kinds.get(a)
        }
        if acts:
            t.acts.append(
                self._step,
                {
                    s: [acts[a][i] if a in acts else math.nan for a in t.act_layers]
                    for i, s in enumerate(t.acts.stats)
                },
            )

    def locate_nonfinite(self, *inputs: Any, **kwargs: Any) -> dict[str, Any]:
        """Run one forward pass and name the first module whose output is NaN or Inf.

        Used when the loss turns non-finite, to say where it started. Does not record a step,
        and puts back the buffers (batch-norm running statistics) the pass updates.
        """
        buffers = {name: b.detach().clone() for name, b in self.model.named_buffers()}
        order: list[tuple[str, bool]] = []
        handles = []
        for name, module in self.model.named_modules():

            def hook(m: nn.Module, a: Any, out: Any, name: str = name) -> None:
                o = out[0] if isinstance(out, tuple | list) else out
                if isinstance(o, torch.Tensor) and o.is_floating_point():
                    order.append((name or ROOT_NAME, bool(torch.isfinite(o).all())))

            handles.append(module.register_forward_hook(hook))
        try:
            with torch.no_grad():
                self.model(*inputs, **kwargs)
        finally:
            for hdl in handles:
                hdl.remove()
            with torch.no_grad():
                for name, b in self.model.named_buffers():
                    b.copy_(buffers[name])
        first_bad = next((n for n, ok in order if not ok), None)
        weights_bad = [
            n
            for n, ps in self._index.layer_params.items()
            if any(not bool(torch.isfinite(p).all()) for _, p in ps)
        ]
        return {"first_nonfinite_module": first_bad, "nonfinite_weights": weights_bad}

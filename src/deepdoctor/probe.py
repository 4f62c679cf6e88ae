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
the weights and the gradient computed at them); the update-to-weight ratio compares the
weights before and after it. A loop that updates weights by hand calls ``probe.end_step()``
after its update instead (then no update ratio is recorded).

The loss is not visible to module hooks: call ``probe.record_loss(loss)`` once per step
(before or after ``optimizer.step()``); without it the loss detectors have nothing to read.

What is recorded, and when
--------------------------
Every step: the weight- and bias-gradient norms and the weight norm of every module that owns
trainable parameters (one fused ``torch._foreach_norm`` call, one host sync). A parameter
whose name contains ``bias`` counts as a bias, every other one as a weight; the weight norm
and the update ratio are taken over all of the layer's trainable parameters, bias included.
Frozen parameters (``requires_grad=False``) are skipped and listed in
``trace.meta["frozen_parameters"]``.

Every ``every``-th step (default 16, and always step 0): statistics of activations, outputs,
inputs, and the update-to-weight ratio. These need a pass over every activation tensor or a
copy of the weights, so sampling keeps the overhead small; ``every=1`` records them all.
The per-module hooks are attached only for the sampled forward pass.

Overhead, measured on 2 shared CPU cores (CPU time per step against the same loop without
the Probe, plain SGD; ``benchmarks/probe_overhead.py``, latest in docs/benchmarks.md): with
the default ``every=16``, +4% for a 50 x 512 MLP on batches of 128, +1% for a ResNet-style
CNN of 20 conv layers on 32x32 images, +3% for a 6 x 256 transformer on sequences of 128;
with ``every=1`` +25%, +8%, +7%. Most of the default's cost is the per-step norms, one read
of every weight and every gradient. Small models pay more, because part of the cost is per
tensor and per module rather than per number: a 50 x 64 sigmoid MLP on batches of 64, whose
step is 4 ms, +40% (``every=1`` +250%); a 4 x 512 ReLU MLP on batches of 256, +2% (+16%).

Activation statistics come from activation *modules* (``nn.ReLU``, ``nn.Sigmoid`` ...);
activations applied functionally (``F.relu``) are not seen, though the output scale of every
parameterised layer still is. The rules:

- dead (ReLU, ReLU6): a unit is dead on a step when its output is exactly zero for every
  example in the batch (and every position, for convolutions and sequences). A unit is a
  channel when the activation is fed by a convolution (or a batch / group norm after one)
  and the last axis (a feature) elsewhere.
- saturated (sigmoid, tanh, hardsigmoid, hardtanh): the fraction of outputs within 1% of
  the output range from a bound, i.e. sigmoid outside (0.01, 0.99), |pre-activation| > 4.6,
  and tanh with |output| > 0.98, |pre-activation| > 2.3. There the local slope is below 4%
  of its peak (for both), so the gradient through the unit is all but gone.
Statistics that do not apply to an activation are NaN.
"""

from __future__ import annotations

import itertools
import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import optimizer as _optimizer_module

from .trace import ACT_STATS, Trace

# Sample the costly statistics every 16th step: with every=1 they triple the time of a
# small deep MLP's step; every 16th step they add a few percent on top of the per-step norms.
DEFAULT_EVERY = 16

# Activation module class -> the name deepdoctor uses for it.
ACTIVATION_KINDS: dict[type[nn.Module], str] = {
    nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh",
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.LeakyReLU: "leaky_relu",
    nn.PReLU: "prelu",
    nn.ELU: "elu",
    nn.SELU: "selu",
    nn.CELU: "celu",
    nn.SiLU: "silu",
    nn.GELU: "gelu",
    nn.Softplus: "softplus",
    nn.Hardtanh: "hardtanh",
    nn.Hardsigmoid: "hardsigmoid",
    nn.Mish: "mish",
}
DYING_ACTIVATIONS = {"relu", "relu6"}  # exactly zero gradient for every negative input
# Saturating activations: (lower bound, upper bound) of the output.
SATURATING_BOUNDS = {
    "sigmoid": (0.0, 1.0),
    "tanh": (-1.0, 1.0),
    "hardsigmoid": (0.0, 1.0),
    "hardtanh": (-1.0, 1.0),
}
# Below this a float32 norm may have lost entries whose squares underflow (|x| < ~1e-19).
TINY_NORM = 1e-15
SATURATION_MARGIN = 0.01  # within 1% of the output range from a bound counts as saturated

CONV_TYPES = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
# Layers whose output keeps the channel on axis 1: an activation they feed has channel units.
CHANNEL_FIRST_TYPES = CONV_TYPES + (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
)
ROOT_NAME = "(model)"


def activation_kind(module: nn.Module) -> str | None:
    for cls, kind in ACTIVATION_KINDS.items():
        if isinstance(module, cls):
            return kind
    return None


def parameter_layers(model: nn.Module) -> tuple[dict[str, nn.Module], list[str]]:
    """Modules that own trainable parameters directly, by module path; and frozen params.

    Raises a ValueError when the model has no trainable parameter at all.
    """
    layers: dict[str, nn.Module] = {}
    frozen: list[str] = []
    for name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own:
            continue
        trainable = [p for _, p in own if p.requires_grad]
        frozen += [f"{name}.{pname}" if name else pname for pname, p in own if not p.requires_grad]
        if trainable:
            layers[name or ROOT_NAME] = module
    if not layers:
        if frozen:
            raise ValueError(
                f"every parameter of this model is frozen ({len(frozen)} tensors with "
                "requires_grad=False); unfreeze the ones you want to train"
            )
        raise ValueError(
            "this model has no parameters, so there is nothing to train or diagnose; "
            "pass a model built from layers with weights (nn.Linear, nn.Conv2d, ...)"
        )
    return layers, frozen


def _is_bias(name: str) -> bool:
    return "bias" in name


class Probe:
    """Record per-layer statistics of ``model`` into ``probe.trace`` while it trains.

    Use it as a context manager around your own loop::

        with dd.Probe(model) as probe:
            for x, y in loader:
                loss = loss_fn(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()              # the Probe sees the step end here
                probe.record_loss(loss)
        findings = dd.detect(probe.trace)

    Leaving the ``with`` block removes every hook.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        every: int = DEFAULT_EVERY,
        activations: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Probe needs an nn.Module, got {type(model).__name__}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a whole number >= 1, got {every!r}")
        self.model = model
        self.optimizer = optimizer
        self.every = every
        self.activations = activations
        self._layers, frozen = parameter_layers(model)
        self._acts: dict[str, tuple[nn.Module, str]] = {}
        for name, module in model.named_modules():
            kind = activation_kind(module)
            if kind is not None:
                self._acts[name or ROOT_NAME] = (module, kind)
        self._layer_params: dict[str, list[tuple[str, nn.Parameter]]] = {
            lname: [(n, p) for n, p in m.named_parameters(recurse=False) if p.requires_grad]
            for lname, m in self._layers.items()
        }
        self._param_ids = {id(p) for ps in self._layer_params.values() for _, p in ps}
        self.trace = Trace(
            list(self._layers),
            {n: type(m).__name__ for n, m in self._layers.items()},
            list(self._acts),
            {n: kind for n, (_, kind) in self._acts.items()},
            {n: None for n in self._acts},
            {"frozen_parameters": frozen, "every": every},
        )
        self._handles: list[Any] = []
        # Per-module hooks exist only during a sampled forward: a module with a hook takes
        # torch's slow call path, which on small models costs more than the statistics.
        self._module_hooks: list[tuple[nn.Module, Callable[..., None]]] = []
        self._module_handles: list[Any] = []
        self._step = 0
        self._forward_in_step = False
        self._order_fixed = False
        self._forward_order: list[str] = []
        self._act_order: list[str] = []
        self._last_layer_run: str | None = None
        # A sampled forward's statistics stay tensors until the step ends, then are read
        # back together: one host sync per step instead of one per module.
        self._pending_outputs: dict[str, torch.Tensor] = {}
        self._pending_acts: dict[str, torch.Tensor] = {}
        self._pending_updates: dict[str, float] | None = None
        self._pending_loss: float | None = None
        self._grad_row: dict[str, list[float]] | None = None
        self._snapshot: list[torch.Tensor] | None = None
        self._snapshot_buffers: list[torch.Tensor] = []
        self._flat: tuple[list[torch.Tensor], list[int], list[bool]] | None = None
        self._lr: float = math.nan
        self._grads_nonfinite = False
        self._sample_forward = False
        self._active = False

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Probe:
        self.attach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def attach(self) -> None:
        if self._active:
            return
        h = self._handles
        h.append(self.model.register_forward_pre_hook(self._on_root_forward))
        self._module_hooks = [(m, self._make_layer_hook(n)) for n, m in self._layers.items()]
        if self.activations:
            self._module_hooks += [
                (m, self._make_act_hook(n, kind)) for n, (m, kind) in self._acts.items()
            ]
        if self.optimizer is not None:
            h.append(self.optimizer.register_step_pre_hook(self._on_step_pre))
            h.append(self.optimizer.register_step_post_hook(self._on_step_post))
        else:
            ref = weakref.ref(self)

            def pre(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
                probe = ref()
                if probe is not None and probe._owns(opt):
                    probe._on_step_pre(opt, args, kwargs)

            def post(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
                probe = ref()
                if probe is not None and probe._owns(opt):
                    probe._on_step_post(opt, args, kwargs)

            h.append(_optimizer_module.register_optimizer_step_pre_hook(pre))
            h.append(_optimizer_module.register_optimizer_step_post_hook(post))
        self._active = True

    def detach(self) -> None:
        self._remove_module_hooks()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._snapshot_buffers = []
        self._active = False

    def _add_module_hooks(self) -> None:
        self._module_handles = [m.register_forward_hook(fn) for m, fn in self._module_hooks]

    def _remove_module_hooks(self) -> None:
        for handle in self._module_handles:
            handle.remove()
        self._module_handles = []

    def _owns(self, opt: torch.optim.Optimizer) -> bool:
        # Runs at every step of every optimizer in the process: keep it in C.
        ids = map(id, itertools.chain.from_iterable(g["params"] for g in opt.param_groups))
        return not self._param_ids.isdisjoint(ids)

    # -- what the user (or the training loop) tells the probe ----------------------------

    @property
    def step(self) -> int:
        """Number of steps recorded so far."""
        return self._step

    @property
    def sampling(self) -> bool:
        """True on steps where the costly statistics are recorded."""
        return self._step % self.every == 0

    def record_loss(self, loss: torch.Tensor | float) -> None:
        """Tell the probe this step's training loss.

        Called after ``optimizer.step()`` with no forward since, it belongs to the step just
        recorded; otherwise to the step in progress.
        """
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        if not self._forward_in_step and self.trace.n_steps > 0:
            self._set_last("loss", value)
            self._set_last("nonfinite_loss", float(not math.isfinite(value)))
        else:
            self._pending_loss = value

    def record_eval(self, step: int | None = None, **metrics: float) -> None:
        """Record evaluation metrics (train_loss, train_accuracy, val_loss, val_accuracy)."""
        unknown = set(metrics) - set(self.trace.evals.stats)
        if unknown:
            raise ValueError(
                f"unknown eval metrics {sorted(unknown)}; use {', '.join(self.trace.evals.stats)}"
            )
        self.trace.evals.append(
            self._step if step is None else step, {k: [v] for k, v in metrics.items()}
        )

    def end_step(self) -> None:
        """Close the current step by hand (for loops that do not call a torch optimizer)."""
        if self._grad_row is None:
            self._grad_row = self._read_grads()
        self._finish_step()

    def _set_last(self, stat: str, value: float) -> None:
        self.trace.steps.set_value(stat, -1, 0, value)

    # -- hooks ---------------------------------------------------------------------------

    def _recording_forward(self, module: nn.Module) -> bool:
        # Evaluation passes (no grad, or eval mode) are not training steps.
        return torch.is_grad_enabled() and self.model.training

    def _on_root_forward(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        # Only the first training forward of a sampled step needs the per-module hooks.
        self._remove_module_hooks()
        if not self._recording_forward(module):
            return
        first = not self._forward_in_step
        self._forward_in_step = True
        self._sample_forward = first and self.sampling
        if self._sample_forward:
            self._add_module_hooks()
            if args and isinstance(args[0], torch.Tensor):
                self._record_input(args[0])

    def _make_layer_hook(self, lname: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not (self._forward_in_step and self._sample_forward):
                return
            self._last_layer_run = lname
            if lname not in self._forward_order:
                self._forward_order.append(lname)
            out = output[0] if isinstance(output, tuple | list) else output
            if not isinstance(out, torch.Tensor) or not out.is_floating_point():
                return
            with torch.no_grad():
                self._pending_outputs[lname] = torch.stack(_mean_std(out.detach().float()))

        return hook

    def _make_act_hook(self, aname: str, kind: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not (self._forward_in_step and self._sample_forward):
                return
            if not isinstance(output, torch.Tensor):
                return
            if aname not in self._act_order:
                self._act_order.append(aname)
                src = self._last_layer_run
                self.trace.act_sources[aname] = src
            src = self.trace.act_sources.get(aname)
            conv_like = src is not None and isinstance(self._layers.get(src), CHANNEL_FIRST_TYPES)
            self._pending_acts[aname] = _activation_stat_tensor(output, kind, conv_like)

        return hook

    def _record_input(self, x: torch.Tensor) -> None:
        vals = _input_stat_tensor(x)
        if vals is None:
            return
        self.trace.inputs.append(
            self._step,
            {s: [v] for s, v in zip(self.trace.inputs.stats, vals.tolist(), strict=True)},
        )

    def _on_step_pre(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._grad_row = self._read_grads()
        try:
            self._lr = float(opt.param_groups[0]["lr"])
        except (KeyError, IndexError, TypeError, ValueError):
            self._lr = math.nan
        if self.sampling:
            self._snapshot = self._take_snapshot()

    def _on_step_post(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._snapshot is not None:
            self._pending_updates = self._update_ratios(self._snapshot)
            self._snapshot = None
        self._finish_step()

    # -- measurement ---------------------------------------------------------------------

    def _take_snapshot(self) -> list[torch.Tensor]:
        """The weights before the update, copied into buffers kept between sampled steps.

        Fresh buffers cost more than the copy: a large new allocation comes from the
        operating system as untouched pages, and faulting them in is slow (profiling a
        50 x 512 MLP's sampled step, 13M weights: 54 ms to clone them, 11 ms to copy them
        into kept buffers). The buffers hold one copy of the trainable weights from the
        first sampled step to ``detach()``; a sampled step needs that copy anyway, so the
        peak memory is the same.
        """
        params = self._flat_params()[0]
        buf = self._snapshot_buffers
        if len(buf) != len(params) or any(
            b.shape != p.shape or b.dtype != p.dtype or b.device != p.device
            for b, p in zip(buf, params, strict=True)
        ):
            buf = self._snapshot_buffers = [torch.empty_like(p) for p in params]
        with torch.no_grad():
            torch._foreach_copy_(buf, params)
        return buf

    def _flat_params(self) -> tuple[list[torch.Tensor], list[int], list[bool]]:
        """Every watched parameter in layer order, with its layer's index and whether it is
        a bias; built once (and again after the layer order is fixed)."""
        if self._flat is None:
            flat = [
                (p, i, _is_bias(n))
                for i, ps in enumerate(self._layer_params.values())
                for n, p in ps
            ]
            self._flat = ([p for p, _, _ in flat], [i for _, i, _ in flat], [b for _, _, b in flat])
        return self._flat

    def _read_grads(self) -> dict[str, list[float]]:
        """Per-layer weight-gradient, bias-gradient and weight norms, with one host sync."""
        params, layer_of, is_bias = self._flat_params()
        grads = [p.grad for p in params]
        present = [j for j, g in enumerate(grads) if g is not None]
        n_grads = len(present)
        with torch.no_grad():
            values = _norms([*(g for g in grads if g is not None), *params])
        n = len(self._layer_params)
        w_sq = [math.nan] * n
        b_sq = [math.nan] * n
        for j, v in zip(present, values[:n_grads], strict=True):
            sq = b_sq if is_bias[j] else w_sq
            i = layer_of[j]
            sq[i] = v * v if math.isnan(sq[i]) else sq[i] + v * v
        self._grads_nonfinite = any(not math.isfinite(v) for v in values[:n_grads])
        weight_sq = [0.0] * n
        for i, v in zip(layer_of, values[n_grads:], strict=True):
            weight_sq[i] += v**2
        return {
            "grad_norm_weight": [math.sqrt(v) for v in w_sq],
            "grad_norm_bias": [math.sqrt(v) for v in b_sq],
            "weight_norm": [math.sqrt(v) for v in weight_sq],
        }

    def _update_ratios(self, before: list[torch.Tensor]) -> dict[str, float]:
        """||after - before|| / ||before|| per layer. ``before`` is the snapshot taken just
        before the update, and is overwritten; ||before|| is the weight norm already read
        for this step's row."""
        with torch.no_grad():
            torch._foreach_sub_(
                before, self._flat_params()[0]
            )  # in place: no second copy of the weights
            d = _norms(before)
        weight_norm = (self._grad_row or {}).get("weight_norm", [])
        out: dict[str, float] = {}
        k = 0
        for i, (lname, ps) in enumerate(self._layer_params.items()):
            dsq = sum(d[k + j] ** 2 for j in range(len(ps)))
            k += len(ps)
            w = weight_norm[i] if i < len(weight_norm) else math.nan
            out[lname] = math.sqrt(dsq) / w if w > 0 else math.nan
        return out

    def _read_pending(self) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        """The sampled forward's output and activation statistics as floats, one host sync."""
        tensors = [*self._pending_outputs.values(), *self._pending_acts.values()]
        if not tensors:
            return {}, {}
        device = tensors[0].device
        values = torch.cat([v.to(device) for v in tensors]).tolist()
        n_out = 2 * len(self._pending_outputs)
        n_act = len(ACT_STATS)
        outs = {n: values[2 * i : 2 * i + 2] for i, n in enumerate(self._pending_outputs)}
        acts = {
            n: values[n_out + n_act * i : n_out + n_act * (i + 1)]
            for i, n in enumerate(self._pending_acts)
        }
        return outs, acts

    def _fix_layer_order(self) -> None:
        """Put layers in the order the forward pass ran them (once, before the first row)."""
        if self._order_fixed:
            return
        self._order_fixed = True
        if not self._forward_order:
            return
        registered = list(self._layers)
        ordered = _forward_ordered(registered, self._forward_order)
        perm = [registered.index(n) for n in ordered]
        self._layers = {n: self._layers[n] for n in ordered}
        self._layer_params = {n: self._layer_params[n] for n in ordered}
        self._flat = None
        self._grad_row = (
            {k: [v[i] for i in perm] for k, v in self._grad_row.items()}
            if self._grad_row is not None
            else None
        )
        acts = self._act_order + [a for a in self._acts if a not in self._act_order]
        t = self.trace
        t.layers = ordered
        t.act_layers = acts
        for table in (t.layer, t.outputs, t.updates):
            table.names = ordered
        t.acts.names = acts

    def _finish_step(self) -> None:
        self._fix_layer_order()
        t = self.trace
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
        outs, acts = self._read_pending()
        if outs:
            nan2 = [math.nan, math.nan]
            t.outputs.append(
                self._step,
                {
                    "out_mean": [outs.get(n, nan2)[0] for n in t.layers],
                    "out_std": [outs.get(n, nan2)[1] for n in t.layers],
                },
            )
        if self._pending_updates is not None:
            ups = self._pending_updates
            t.updates.append(self._step, {"update_ratio": [ups.get(n, math.nan) for n in t.layers]})
        if acts:
            t.acts.append(
                self._step,
                {
                    s: [acts[a][i] if a in acts else math.nan for a in t.act_layers]
                    for i, s in enumerate(t.acts.stats)
                },
            )
        self._pending_outputs, self._pending_acts, self._pending_updates = {}, {}, None
        self._pending_loss = None
        self._grad_row = None
        self._grads_nonfinite = False
        self._forward_in_step = False
        self._sample_forward = False
        self._step += 1

    def locate_nonfinite(self, *inputs: Any) -> dict[str, Any]:
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
                self.model(*inputs)
        finally:
            for hdl in handles:
                hdl.remove()
            with torch.no_grad():
                for name, b in self.model.named_buffers():
                    b.copy_(buffers[name])
        first_bad = next((n for n, ok in order if not ok), None)
        weights_bad = [
            n
            for n, ps in self._layer_params.items()
            if any(not bool(torch.isfinite(p).all()) for _, p in ps)
        ]
        return {"first_nonfinite_module": first_bad, "nonfinite_weights": weights_bad}


def _forward_ordered(registered: list[str], ran: list[str]) -> list[str]:
    """``registered`` layers in the order the forward ran them (``ran``).

    A layer the forward did not call as a module (e.g. attention's out_proj, used
    functionally) goes right after the nearest earlier registered layer.
    """
    ordered = [name for name in ran if name in registered]
    for i, name in enumerate(registered):
        if name in ordered:
            continue
        prev = next((registered[j] for j in range(i - 1, -1, -1) if registered[j] in ordered), None)
        ordered.insert(ordered.index(prev) + 1 if prev else 0, name)
    return ordered


def _input_stat_tensor(x: torch.Tensor) -> torch.Tensor | None:
    """mean, std, feature_mean_absmax, feature_std_max, feature_std_min of an input batch
    (a feature is a channel when the input has more than two axes); None when they do not
    apply (integer inputs such as token ids, or fewer than two examples)."""
    if not x.is_floating_point() or x.dim() < 2 or x.shape[0] < 2:
        return None
    with torch.no_grad():
        x = x.detach().float()
        flat = (
            x.reshape(x.shape[0], -1)
            if x.dim() == 2
            else x.transpose(0, 1).reshape(x.shape[1], -1).T
        )
        fmean = flat.mean(0)
        fstd = flat.std(0)
        return torch.stack([x.mean(), x.std(), fmean.abs().max(), fstd.max(), fstd.min()])


def _norms(tensors: Sequence[torch.Tensor]) -> list[float]:
    """L2 norms of the tensors, with one host sync; tiny ones recomputed in float64.

    A float32 norm squares the entries, and squares of entries below ~1e-19 underflow, so a
    vanishing gradient of 1e-23 would read as exactly 0. Norms below ``TINY_NORM`` are
    therefore recomputed in float64 (good down to ~1e-154). Only those: a float64 norm of
    every tensor costs ten times as much.
    """
    if not tensors:
        return []
    values = torch.stack(torch._foreach_norm(list(tensors))).float().tolist()
    tiny = [i for i, v in enumerate(values) if v < TINY_NORM]  # NaN compares False: stays
    if tiny:
        exact = torch._foreach_norm([tensors[i] for i in tiny], 2, dtype=torch.float64)
        for i, v in zip(tiny, torch.stack(exact).tolist(), strict=True):
            values[i] = v
    return values


def _activation_stat_tensor(
    output: torch.Tensor, kind: str, conv_like: bool, moments: bool = True
) -> torch.Tensor:
    """The ``ACT_STATS`` of one activation output as a tensor (NaN where a rule does not
    apply), so a caller can gather many layers and read them back with one host sync.
    ``moments=False`` skips mean, std and the non-finite flag (NaN) for callers that only
    need the dead and saturated fractions."""
    with torch.no_grad():
        x = output.detach().float()
        nan = x.new_full((), math.nan)
        dead = sat = nan
        if kind in DYING_ACTIVATIONS and x.dim() >= 2:
            unit = 1 if conv_like else x.dim() - 1
            # ReLU outputs are >= 0, so a unit is alive when its largest output is above 0
            # (a max over every other axis: no copy, a third of the cost of != 0 / any).
            peak = x.amax(dim=[d for d in range(x.dim()) if d != unit])
            dead = (peak <= 0).float().mean()
        if kind in SATURATING_BOUNDS:
            lo, hi = SATURATING_BOUNDS[kind]
            margin = SATURATION_MARGIN * (hi - lo)
            sat = ((x < lo + margin) | (x > hi - margin)).float().mean()
        if not moments:
            return torch.stack([nan, nan, dead, sat, nan])
        mean, std = _mean_std(x)
        # A NaN or Inf anywhere makes the mean NaN or Inf; so does a sum past float32's
        # range (~3e38), which is as good as infinite. Cheaper than isfinite(x).all().
        return torch.stack([mean, std, dead, sat, (~torch.isfinite(mean)).float()])


def _mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sample standard deviation (0 for a single element) of a float tensor.

    Two passes: the mean, then the sum of squared deviations from it (cascade-summed, as
    accurate as ``Tensor.std``). ``Tensor.std`` runs Welford's update element by element,
    3-4x slower on a CPU; a one-pass sum of squares would be faster still but loses every
    digit when the mean is large against the spread. One difference: deviations past ~1e19
    square beyond float32's range and read inf, where ``Tensor.std`` stays finite.
    """
    mean = x.mean()
    if x.numel() < 2:
        return mean, x.new_zeros(())
    dev = x - mean
    dev.square_()
    return mean, (dev.sum() / (x.numel() - 1)).sqrt()

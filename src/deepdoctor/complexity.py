"""Complexity of a model: parameters, connections, FLOPs and activation memory per example.

``dd.complexity(model, batch)`` (this module's ``measure``) runs one forward pass without
gradients and counts, for every module that owns parameters (in the order the forward runs
them):

- ``params``: the numbers in its own parameter tensors (frozen ones included).
- ``connections``: its weights, i.e. the entries of its parameter tensors with two or more
  axes (weight matrices, kernels, embedding tables; not biases or norm scales). A weight
  shared between positions is counted once, and ``reuse`` says how many times it is applied
  per example: the number of output positions (1 for a Linear on a flat input, H*W for a 2-d
  convolution, the sequence length for a Linear, attention or recurrent layer on a
  sequence). A module called twice adds up its positions. None for a module the forward
  did not call as a module (attention's ``out_proj`` is applied functionally).
- ``flops``: floating-point operations per example, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add is two; only the operations
  torch counts: matrix products, convolutions, attention; elementwise work is free). A
  module's count includes its children's.

Totals: every parameter counted once (tied weights too), the sum of connections, the FLOPs
of the whole forward, and ``activation_bytes``: the bytes of every leaf module's output per
example, roughly what a training step keeps for the backward pass (functional operations
inside a module are not seen). The first axis of the input is the batch axis.

With ``n_samples`` (the size of the training set) the result carries parameters per sample
and, when that is very large, an info finding: a net that can memorise its training set.

The two helpers ``untouched`` and ``located_errors`` are shared with the checkup: a pass
leaves the model exactly as it was, and a forward that fails names the layer it failed in.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .batch import Inputs, call_model
from .findings import Finding
from .stats import CHANNEL_FIRST_TYPES, ROOT_NAME, forward_ordered
from .trace import json_ready

# More than 100 parameters per training sample: the net can memorise every sample many
# times over, so its fit says little until regularisation or more data proves otherwise.
PARAMS_PER_SAMPLE_MAX = 100.0


@dataclass
class LayerComplexity:
    """One parameter-owning module's size and cost per example."""

    name: str
    type: str
    params: int
    connections: int
    reuse: int | None
    flops: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "params": self.params,
            "connections": self.connections,
            "reuse": self.reuse,
            "flops": self.flops,
        }


@dataclass
class Complexity:
    """Per-layer and total size and cost of a model; see the module docstring."""

    layers: list[LayerComplexity]
    params: int
    connections: int
    flops: float
    activation_bytes: float
    n_samples: int | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def params_per_sample(self) -> float | None:
        return self.params / self.n_samples if self.n_samples else None

    def to_dict(self) -> dict[str, Any]:
        return json_ready(
            {
                "layers": [layer.to_dict() for layer in self.layers],
                "total": {
                    "params": self.params,
                    "connections": self.connections,
                    "flops": self.flops,
                    "activation_bytes": self.activation_bytes,
                },
                "params_per_sample": self.params_per_sample,
            }
        )


# -- running a pass that changes nothing ----------------------------------------------------


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Put back, on exit, everything a forward pass in training mode can change.

    The train / eval mode of every submodule, every buffer (batch-norm running statistics
    and their counters) and the global random state of torch (CPU and the model's GPUs),
    numpy and Python. Parameters and ``.grad`` are the caller's to leave alone.
    """
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    # is_cuda first: no device object made for every parameter of a CPU model
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        for module, mode in modes:
            module.training = mode
        with torch.no_grad():
            for buf, saved in buffers:
                buf.copy_(saved)
        np.random.set_state(np_state)
        random.setstate(py_state)


def _shapes(args: Any) -> str:
    shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
    return ", ".join(str(s) for s in shapes) or "no tensor"


def _failure_message(name: str, module: nn.Module, args: Any, exc: Exception) -> str:
    kind = type(module).__name__
    shapes = _shapes(args)
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if (
        isinstance(module, nn.modules.batchnorm._BatchNorm)
        and first is not None
        and first.shape[0] == 1
    ):
        return (
            f"batch norm layer {name!r} cannot compute batch statistics from a batch of one "
            f"example (input shape {shapes}); pass at least 2 examples, ideally as many as "
            "you train with"
        )
    expects = ""
    if isinstance(module, nn.Linear):
        expects = f" It expects {module.in_features} features on the last axis."
    elif isinstance(module, nn.modules.conv._ConvNd):
        expects = f" It expects {module.in_channels} channels on axis 1."
    elif isinstance(module, nn.Embedding):
        expects = f" It expects integer ids below {module.num_embeddings}."
    return (
        f"the model failed in layer {name!r} ({kind}) on input of shape {shapes}: "
        f"{type(exc).__name__}: {str(exc).strip()}.{expects} Check that the batch's shape "
        "fits the model"
    )


@contextlib.contextmanager
def located_errors(model: nn.Module) -> Iterator[None]:
    """Turn an exception raised inside the model's forward into a ValueError that names the
    innermost module it was raised in and that module's input shapes.

    Every module pushes itself on a stack before its forward and pops after it; a forward
    that raises never pops, so the top of the stack is where it failed. The hooks are
    global ones (two registrations, not two per module: a 1,000-layer model would otherwise
    carry thousands of hook handles through its backward pass).
    """
    stack: list[tuple[nn.Module, Any]] = []

    def push(module: nn.Module, args: Any) -> None:
        stack.append((module, args))

    def pop(module: nn.Module, args: Any, output: Any) -> None:
        if stack:
            stack.pop()

    handles = [register_module_forward_pre_hook(push), register_module_forward_hook(pop)]
    try:
        yield
    except Exception as exc:
        if not stack:
            raise
        module, args = stack[-1]
        name = next(
            (n or ROOT_NAME for n, m in model.named_modules() if m is module), type(module).__name__
        )
        raise ValueError(_failure_message(name, module, args, exc)) from exc
    finally:
        for handle in handles:
            handle.remove()


# -- measuring ---------------------------------------------------------------------------


def _as_inputs(batch: Any) -> Inputs:
    """The forward's arguments in ``batch``: X, or the X of ``(X, y)`` (``deepdoctor.batch``
    says how a dict or a tuple of inputs maps to a forward call)."""
    pair = isinstance(batch, tuple | list) and len(batch) == 2
    X = batch[0] if pair else batch
    if isinstance(X, Inputs | dict):
        found = X if isinstance(X, Inputs) else Inputs(kwargs=dict(X))
        if not len(found):
            raise ValueError("the batch's inputs need a batch axis with at least one example")
        return found
    inputs = tuple(X) if pair and isinstance(X, tuple | list) else (X,)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        given = type(batch).__name__
        if isinstance(batch, tuple | list):
            given += f" of {len(batch)}: ({', '.join(type(b).__name__ for b in batch)})"
        raise TypeError(
            "batch must be a tensor X or a tuple (X, y), where X may be a tuple of tensors "
            f"for a forward that takes several; got a {given}"
        )
    if inputs[0].dim() == 0 or inputs[0].shape[0] == 0:
        raise ValueError(
            f"the batch's X has shape {tuple(inputs[0].shape)}; it needs a batch axis "
            "with at least one example"
        )
    return Inputs(args=inputs)


def _positions(output: torch.Tensor, module: nn.Module, batch: int) -> int:
    """Output positions per example: output entries per example over units per position."""
    unit_axis = 1 if isinstance(module, CHANNEL_FIRST_TYPES) and output.dim() >= 3 else -1
    units = output.shape[unit_axis] if output.dim() >= 2 else 1
    return max(1, output.numel() // max(1, batch * units))


def _cpu_lstm_flops(input_shape: Any, w_ih: Any, w_hh: Any, *args: Any, **kwargs: Any) -> int:
    """One LSTM layer on CPU: two matrix products per time step and example."""
    steps_by_batch = math.prod(input_shape) // input_shape[-1]
    return 2 * steps_by_batch * (math.prod(w_ih) + math.prod(w_hh))


def _cpu_sdpa_flops(q: Any, k: Any, v: Any, *args: Any, **kwargs: Any) -> int:
    return int(sdpa_flop_count(q, k, v))


# CPU kernels FlopCounterMode has no formula for (it knows their GPU counterparts).
CPU_FLOP_FORMULAS = {
    torch.ops.aten.mkldnn_rnn_layer: _cpu_lstm_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
}


def measure(model: nn.Module, batch: Any, n_samples: int | None = None) -> Complexity:
    """Parameters, connections, FLOPs and activation memory of ``model`` per example.

    ``batch``: the inputs X (a tensor), or ``(X, y)`` as checkup and diagnose take it (y is
    not used); for a forward that takes several arguments X is a tuple of tensors, e.g.
    ``((tokens, mask), y)``. Two examples are plenty. The model is left exactly as it was.
    Batch-norm layers run in eval mode for the count (a batch of one example works; the
    FLOPs are the same), everything else in training mode. ``dd.complexity`` is this
    function.

    >>> import torch, deepdoctor as dd
    >>> c = dd.complexity(torch.nn.Linear(3, 2), torch.zeros(1, 3))
    >>> c.params, c.connections, c.flops
    (8, 6, 12.0)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if n_samples is not None and (
        isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1
    ):
        raise ValueError(f"n_samples must be a whole number >= 1, got {n_samples!r}")
    with untouched(model):
        return count(model, batch, n_samples)


def count(model: nn.Module, batch: Any, n_samples: int | None = None) -> Complexity:
    """``measure`` inside the caller's ``untouched`` block (which puts back the modes it
    sets): a checkup, which restores the model after its own pass anyway, saves a second
    save-and-restore (a third of a millisecond at depth 10; numpy's random state alone
    costs 0.1 ms)."""
    inputs = _as_inputs(batch)
    examples = len(inputs)
    owners = {
        name or ROOT_NAME: m
        for name, m in model.named_modules()
        if next(m.parameters(recurse=False), None) is not None
    }
    reuse: dict[str, int] = {}
    ran: list[str] = []
    act_bytes = [0]

    owner_names = {module: name for name, module in owners.items()}
    leaves = {m for m in model.modules() if next(m.children(), None) is None}

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        outs = output if isinstance(output, tuple | list) else (output,)
        name = owner_names.get(module)
        if name is not None:
            if name not in reuse:
                ran.append(name)
                reuse[name] = 0
            if isinstance(outs[0], torch.Tensor):
                reuse[name] += _positions(outs[0], module, examples)
        if module in leaves:
            act_bytes[0] += sum(
                t.numel() * t.element_size() for t in outs if isinstance(t, torch.Tensor)
            )

    handles = [register_module_forward_hook(hook)]
    counter = FlopCounterMode(display=False, custom_mapping=CPU_FLOP_FORMULAS)
    try:
        with torch.no_grad():
            model.train()
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
            with located_errors(model), counter:
                call_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()

    counts = counter.get_flop_counts()
    prefix = type(model).__name__
    layers = []
    for name in forward_ordered(list(owners), ran):
        module = owners[name]
        own = list(module.parameters(recurse=False))
        key = prefix if name == ROOT_NAME else f"{prefix}.{name}"
        layers.append(
            LayerComplexity(
                name=name,
                type=type(module).__name__,
                params=sum(p.numel() for p in own),
                connections=sum(p.numel() for p in own if p.dim() >= 2),
                reuse=reuse.get(name),
                flops=sum(counts.get(key, {}).values()) / examples,
            )
        )
    unique = {id(p): p for p in model.parameters()}.values()
    result = Complexity(
        layers=layers,
        params=sum(p.numel() for p in unique),
        connections=sum(p.numel() for p in unique if p.dim() >= 2),
        flops=counter.get_total_flops() / examples,
        activation_bytes=act_bytes[0] / examples,
        n_samples=n_samples,
    )
    result.findings = _findings(result)
    return result


def _findings(c: Complexity) -> list[Finding]:
    per_sample = c.params_per_sample
    if per_sample is None or per_sample <= PARAMS_PER_SAMPLE_MAX:
        return []
    return [
        Finding(
            kind="overfitting",
            severity="info",
            summary=(
                f"{c.params:,} parameters for {c.n_samples:,} training samples "
                f"({per_sample:,.0f} per sample): enough to memorise the training set, so watch "
                "the validation loss and regularise"
            ),
            evidence={
                "params": c.params,
                "n_samples": c.n_samples,
                "params_per_sample": per_sample,
                "threshold": PARAMS_PER_SAMPLE_MAX,
            },
            remedies=[
                "weight_decay",
                "dropout",
                "data_augmentation",
                "early_stopping",
                "less_capacity",
            ],
        )
    ]

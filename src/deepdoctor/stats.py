"""The per-layer statistics: one definition of every number the Probe and the checkup record.

Everything that measures a model calls this module: the Probe during training, the checkup at
initialisation (through the Probe), the integrations through the Probe. So a weight layer, a
dead unit, a saturated unit, an input's scale and a gradient norm mean the same wherever they
were measured, and the same numbers reach the same detectors.

What is here:

- the model's anatomy: ``parameter_layers`` (modules owning trainable parameters),
  ``activation_kind`` (which nonlinearity a module is), ``is_weight_layer`` (a layer whose
  weight matrix or kernel mixes its input: the layers depth is counted in), ``is_bias``;
- ``ParameterIndex``: the watched parameters of each layer, flattened once, and the per-layer
  gradient and weight norms read from them (``.grad``, or squared norms a caller measured);
- ``ForwardWalk``: one observed forward pass in execution order: each layer's output mean
  and std, each activation module's statistics and the layer that fed it, the input's scale;
- the tensor statistics themselves: ``norms``, ``mean_std``, ``activation_stats``,
  ``input_stats``, and ``AutogradNorms`` (gradient norms without writing ``.grad``).

The rules for units:

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

import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.module import register_module_forward_hook

ACT_STATS = ["act_mean", "act_std", "dead_frac", "saturated_frac", "nonfinite"]
INPUT_STATS = ["mean", "std", "feature_mean_absmax", "feature_std_max", "feature_std_min"]

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
# Layers whose weights carry the signal through the network, so depth is counted in them.
# Norm layers (their affine parameters are scale-free by design), embeddings (sparse rows)
# and parameter holders such as positional encodings are not: their gradient scale says
# nothing about depth. A module of another type counts when it owns a trainable parameter
# of two or more axes (a weight matrix or kernel) and is not a norm or an embedding.
WEIGHT_LAYER_TYPES = (
    nn.Linear,
    nn.Bilinear,
    nn.modules.conv._ConvNd,
    nn.RNNBase,
    nn.MultiheadAttention,
)
NOT_WEIGHT_LAYER_TYPES = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.Embedding,
    nn.EmbeddingBag,
)
ROOT_NAME = "(model)"


def _torch_names(types: tuple[type, ...]) -> frozenset[str]:
    return frozenset(
        cls.__name__
        for cls in vars(nn).values()
        if isinstance(cls, type) and issubclass(cls, types) and not cls.__name__.startswith("_")
    )


# The same rule by class name, for a Trace that records only its layers' type names (one
# built by hand, or saved before traces recorded their weight layers).
WEIGHT_LAYER_TYPE_NAMES = _torch_names(WEIGHT_LAYER_TYPES)


# -- anatomy --------------------------------------------------------------------------------


def activation_kind(module: nn.Module) -> str | None:
    """The activation a module applies (``relu``, ``sigmoid`` ...), or None."""
    for cls, kind in ACTIVATION_KINDS.items():
        if isinstance(module, cls):
            return kind
    return None


def is_bias(name: str) -> bool:
    """A parameter counts as a bias when its name says so; every other one is a weight."""
    return "bias" in name


def is_weight_layer(module: nn.Module) -> bool:
    """True for a layer whose weight matrix or kernel mixes its input (see
    ``WEIGHT_LAYER_TYPES``): the layers in which depth is counted."""
    if isinstance(module, WEIGHT_LAYER_TYPES):
        return True
    if isinstance(module, NOT_WEIGHT_LAYER_TYPES):
        return False
    return any(p.dim() >= 2 for p in module.parameters(recurse=False) if p.requires_grad)


def parameter_layers(model: nn.Module) -> tuple[dict[str, nn.Module], list[str]]:
    """Modules that own trainable parameters directly, by module path; and frozen params.

    A parameter shared by two modules (tied weights: a language model's output layer and
    its embedding) belongs to the first one only, so its gradient is counted once.
    Raises a ValueError when the model has no trainable parameter at all.
    """
    layers: dict[str, nn.Module] = {}
    frozen: list[str] = []
    seen: set[int] = set()
    for name, module in model.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for _, p in own)
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


def activation_modules(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Activation modules by module path, with their kind."""
    acts: dict[str, tuple[nn.Module, str]] = {}
    for name, module in model.named_modules():
        kind = activation_kind(module)
        if kind is not None:
            acts[name or ROOT_NAME] = (module, kind)
    return acts


def forward_ordered(registered: list[str], ran: list[str]) -> list[str]:
    """``registered`` layers in the order the forward ran them (``ran``).

    A layer the forward did not call as a module (e.g. attention's out_proj, used
    functionally) goes right after the nearest earlier registered layer.
    """
    known = set(registered)
    ordered = [name for name in ran if name in known]
    placed = set(ordered)  # sets, not the lists: a 1,000-layer net made this quadratic
    for i, name in enumerate(registered):
        if name in placed:
            continue
        prev = next((registered[j] for j in range(i - 1, -1, -1) if registered[j] in placed), None)
        ordered.insert(ordered.index(prev) + 1 if prev else 0, name)
        placed.add(name)
    return ordered


# -- tensor statistics ------------------------------------------------------------------------


def is_dtensor(t: object) -> bool:
    """True for a torch.distributed DTensor (FSDP2's sharded parameters and gradients).
    Without importing its module, which costs a second: none exists unless it is loaded."""
    module = sys.modules.get("torch.distributed.tensor")
    cls = getattr(module, "DTensor", None)
    return cls is not None and isinstance(t, cls)


def local_part(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor (its shard); any other tensor itself."""
    d: Any = t
    return d.to_local() if is_dtensor(t) else t


def norms(tensors: Sequence[torch.Tensor]) -> list[float]:
    """L2 norms of the tensors, with one host sync; tiny ones recomputed in float64.

    A float32 norm squares the entries, and squares of entries below ~1e-19 underflow, so a
    vanishing gradient of 1e-23 would read as exactly 0. Norms below ``TINY_NORM`` are
    therefore recomputed in float64 (good down to ~1e-154). Only those: a float64 norm of
    every tensor costs ten times as much.
    """
    return norms_and(tensors, [])[0]


# A contiguous tensor of at most this many entries is reduced by torch in one thread, in
# memory order, whatever the thread count (32768 is ATen's grain size), so its norm is the
# same bit for bit alone or as a row of a stack of tensors of its shape; and copying it into
# the stack costs less than the ~2 us of dispatch its own norm would (a 64 x 64 weight:
# ~0.6 us). Larger tensors are read one by one: the copy would cost more than the dispatch.
STACK_NUMEL = 32768


@dataclass
class _Batch:
    """Tensors whose norms one call reads: a stack of same-shaped small ones, or a list read
    one by one; in float32 or, for tiny norms, float64. ``start``: where its norms begin in
    the plan's result.

    A stack is read into ``into``, a buffer kept with the plan: a fresh stack of a model's
    small tensors is large enough to come from the system as new pages (~70 page faults a
    step for a 50 x 64 MLP). A float64 stack is stacked in the tensors' own dtype and then
    cast into ``wide_into`` in one call: stacking into float64 directly copies tensor by
    tensor (~1.5 us each), and ``vector_norm(dtype=float64)`` would allocate the cast copy.
    """

    positions: list[int]
    stacked: bool
    wide: bool
    start: int = 0
    into: torch.Tensor | None = None
    wide_into: torch.Tensor | None = None
    resident: bool = False  # the tensors are the rows of ``into`` (``StackedCopies``)


@dataclass
class _NormPlan:
    """How ``norms_and`` reads a list of tensors: its batches, whose norms fill ``out`` (a
    float64 vector kept with a cached plan) one after the other; ``order[i]``, where the
    norm of position i lands there (None: in order); ``narrow``, the positions read in the
    tensors' own dtype, whose values may need a float64 recount."""

    batches: list[_Batch]
    order: list[int] | None
    narrow: list[int]
    out: torch.Tensor | None = None


class NormCache:
    """What a caller that reads the same tensors step after step keeps between calls of
    ``norms_and``: the plans of how to group them (``_norm_plan``), with their buffers."""

    def __init__(self) -> None:
        self.plans: dict[Any, _NormPlan] = {}


def _norm_plan(
    tensors: Sequence[torch.Tensor], wide: Sequence[int], buffers: bool = False
) -> _NormPlan:
    """Group the tensors of one shape, dtype and device (small, contiguous) into stacks;
    ``buffers``: give each stack a buffer to be read into, and the plan its result vector."""
    wide_set = set(wide)
    groups: dict[tuple[Any, ...], list[int]] = {}
    loose: dict[bool, list[int]] = {False: [], True: []}
    for i, t in enumerate(tensors):
        w = i in wide_set
        if t.is_contiguous() and 0 < t.numel() <= STACK_NUMEL:
            groups.setdefault((t.shape, t.dtype, t.device, w), []).append(i)
        else:
            loose[w].append(i)
    batches = []
    for (shape, dtype, device, w), positions in groups.items():
        if len(positions) == 1:
            loose[w] += positions
            continue
        into = wide_into = None
        if buffers:
            size = (len(positions), *shape)
            into = torch.empty(size, dtype=dtype, device=device)
            if w:
                wide_into = torch.empty(size, dtype=torch.float64, device=device)
        batches.append(_Batch(positions, True, w, into=into, wide_into=wide_into))
    batches += [_Batch(sorted(positions), False, w) for w, positions in loose.items() if positions]
    start = 0
    for batch in batches:
        batch.start = start
        start += len(batch.positions)
    ran = [i for batch in batches for i in batch.positions]
    narrow = sorted(i for batch in batches if not batch.wide for i in batch.positions)
    out = None
    if buffers and tensors:
        out = torch.empty(len(tensors), dtype=torch.float64, device=tensors[0].device)
    if ran == list(range(len(tensors))):
        return _NormPlan(batches, None, narrow, out)
    order = [0] * len(ran)
    for k, i in enumerate(ran):
        order[i] = k
    return _NormPlan(batches, order, narrow, out)


def _planned_norms(tensors: Sequence[torch.Tensor], plan: _NormPlan) -> torch.Tensor:
    """The norms of ``tensors`` as one float64 vector, in the plan's order: a stack of
    same-shaped small tensors is one copy and one reduction instead of a dispatch per
    tensor, and each batch writes its norms straight into the vector."""
    out = plan.out
    if out is None:
        out = torch.empty(len(tensors), dtype=torch.float64, device=tensors[0].device)
    for batch in plan.batches:
        chosen = [tensors[i] for i in batch.positions]
        target = out[batch.start : batch.start + len(chosen)]
        if not batch.stacked:
            dtype = torch.float64 if batch.wide else None
            target.copy_(torch.stack(torch._foreach_norm(chosen, 2, dtype=dtype)))
            continue
        if batch.resident:
            assert batch.into is not None
            rows = batch.into.view(len(chosen), -1)
        else:
            rows = torch.stack(chosen, out=batch.into).view(len(chosen), -1)
        if not batch.wide:
            target.copy_(torch.linalg.vector_norm(rows, 2, dim=1))
            continue
        wide = rows.to(torch.float64) if batch.wide_into is None else batch.wide_into
        if batch.wide_into is not None:
            wide.view(len(chosen), -1).copy_(rows)
        if wide.device == out.device:
            torch.linalg.vector_norm(wide.view(len(chosen), -1), 2, dim=1, out=target)
        else:
            target.copy_(torch.linalg.vector_norm(wide.view(len(chosen), -1), 2, dim=1))
    return out


class StackedCopies:
    """Buffers to copy a list of tensors into, whose small, same-shaped, contiguous members
    are the rows of one stack, so that the norms of what they hold are one reduction per
    stack, with no copy (``norms``): the Probe's snapshot of the weights before a sampled
    update, whose difference from the updated weights it measures. One dispatch per tensor
    (``torch._foreach_norm``) costs ~3.5 us each on a CPU; a 50 x 64 MLP has 102."""

    def __init__(self, like: Sequence[torch.Tensor]) -> None:
        self.plan = _norm_plan(like, [], buffers=True)
        self.copies: list[torch.Tensor] = list(like)  # placeholders, each replaced below
        for batch in self.plan.batches:
            if batch.stacked:
                assert batch.into is not None
                batch.resident = True
                for row, i in zip(batch.into, batch.positions, strict=True):
                    self.copies[i] = row
            else:
                for i in batch.positions:
                    self.copies[i] = torch.empty_like(like[i])
        self._like = [(t.shape, t.dtype, t.device) for t in like]

    def fit(self, tensors: Sequence[torch.Tensor]) -> bool:
        """Whether these buffers hold copies of ``tensors`` (same shapes, dtypes, devices)."""
        return len(tensors) == len(self._like) and all(
            t.shape == shape and t.dtype == dtype and t.device == device
            for t, (shape, dtype, device) in zip(tensors, self._like, strict=True)
        )

    def norms(self) -> tuple[torch.Tensor, list[int] | None]:
        """The norms of the copies as a float64 vector on the device, and where copy i's
        lands in it (None: in order); each the one ``torch.linalg.vector_norm`` gives for it
        alone. The vector is reused by the next call."""
        return _planned_norms(self.copies, self.plan), self.plan.order


def norms_and(
    tensors: Sequence[torch.Tensor],
    also: Sequence[torch.Tensor],
    tiny: set[int] | None = None,
    cache: NormCache | None = None,
    key: Any = None,
) -> tuple[list[float], list[float]]:
    """``norms(tensors)``, and the values of the tensors ``also`` (flattened, in order, as
    float64) read in the same host sync.

    ``tiny``: for a caller that reads the same tensors step after step, the positions whose
    norm was below ``TINY_NORM`` the last time; they are read in float64 straight away (a
    vanishing layer stays vanishing, so a steady run does no second pass), and the set is
    brought up to date in place. ``cache``: that caller's plans of how to group its tensors
    into stacks, kept between calls, and ``key`` what tells its lists of tensors apart
    beyond their length (which gradients are there, say). Every value is the one
    ``torch.linalg.vector_norm`` gives for each tensor alone.
    """
    if not tensors:
        if not also:
            return [], []
        device = also[0].device
        return [], torch.cat([t.reshape(-1).to(device, torch.float64) for t in also]).tolist()
    n = len(tensors)
    exact = sorted(i for i in tiny if i < n) if tiny else []
    try:
        plan = _cached_plan(tensors, exact, cache, key)
        joined = _planned_norms(tensors, plan)
    except RuntimeError:  # a stack whose shapes or devices changed since it was planned
        if cache is None:
            raise
        cache.plans.clear()
        plan = _cached_plan(tensors, exact, cache, key)
        joined = _planned_norms(tensors, plan)
    if also:
        tail = [t.reshape(-1).to(joined.device, torch.float64) for t in also]
        joined = torch.cat([joined, *tail])
    read = joined.tolist()
    values = read[:n] if plan.order is None else [read[k] for k in plan.order]
    extra = read[n:]
    recount = recount_tiny(tensors, values, plan.narrow)
    if tiny is not None:
        tiny.difference_update(i for i in exact if not values[i] < TINY_NORM)
        tiny.update(recount)
    return values, extra


def _cached_plan(
    tensors: Sequence[torch.Tensor],
    exact: list[int],
    cache: NormCache | None,
    key: Any,
) -> _NormPlan:
    """The plan for these tensors, from the cache when the caller's key, their count, the
    float64 positions and the positions of non-contiguous tensors are those it was made
    for. (A parameter given new data of another shape or device makes its stack fail, and
    ``norms_and`` plans again.)"""
    if cache is None:
        return _norm_plan(tensors, exact)
    plans = cache.plans
    irregular: tuple[int, ...] = ()
    if not all(map(torch.Tensor.is_contiguous, tensors)):  # the cheap test first
        irregular = tuple(i for i, t in enumerate(tensors) if not t.is_contiguous())
    full_key = (key, len(tensors), tuple(exact), irregular)
    plan = plans.get(full_key)
    if plan is None:
        if len(plans) >= MAX_PLANS:
            plans.clear()
        plan = plans[full_key] = _norm_plan(tensors, exact, buffers=True)
    return plan


# Plans a reader keeps: one per set of tiny positions seen recently (a run settles on one).
# Each holds buffers for its stacks, up to a copy of the model's small tensors.
MAX_PLANS = 4


def recount_tiny(
    tensors: Sequence[torch.Tensor], values: list[float], among: Iterable[int] | None = None
) -> list[int]:
    """Recompute in float64, in place, the norms in ``values`` (of ``tensors``, positions
    ``among``, default all) that read below ``TINY_NORM`` in float32; their positions.
    NaN compares False, so it stays. A second host sync, only when there is one."""
    positions = range(len(values)) if among is None else among
    recount = [i for i in positions if values[i] < TINY_NORM]
    if recount:
        wide = torch._foreach_norm([tensors[i] for i in recount], 2, dtype=torch.float64)
        for i, v in zip(recount, torch.stack(wide).tolist(), strict=True):
            values[i] = v
    return recount


def mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sample standard deviation (0 for a single element) of a float tensor.

    Two passes: the mean, then the sum of squared deviations from it (cascade-summed, as
    accurate as ``Tensor.std``). ``Tensor.std`` runs Welford's update element by element,
    3-4x slower on a CPU; a one-pass sum of squares would be faster still but loses every
    digit when the mean is large against the spread. One difference: deviations past ~1e19
    square beyond float32's range and read inf, where ``Tensor.std`` stays finite.
    """
    mean, sqdev = mean_sqdev(x)
    if sqdev is None:
        return mean, x.new_zeros(())
    return mean, (sqdev / (x.numel() - 1)).sqrt()


def mean_sqdev(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The two passes of ``mean_std``: the mean and the sum of squared deviations from it
    (None for a single element). ``ForwardWalk`` divides and takes the square roots of many
    at once, with the same float32 operations, so the std is the same to the bit."""
    mean = x.mean()
    if x.numel() < 2:
        return mean, None
    dev = x - mean
    dev.square_()
    return mean, dev.sum()


def row_mean_sqdev(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean_sqdev`` of every row of a contiguous 2-D tensor (rows of at least two
    entries) in four operations. A row of at most ``STACK_NUMEL`` entries is summed as the
    tensor alone is (one thread, memory order), so each value equals ``mean_sqdev`` of that
    row alone, bit for bit (``tests/test_walk_rows.py``)."""
    mean = rows.mean(1)
    dev = rows - mean[:, None]
    dev.square_()
    return mean, dev.sum(1)


def activation_stats(output: torch.Tensor, kind: str, conv_like: bool) -> torch.Tensor:
    """The ``ACT_STATS`` of one activation output as a tensor (NaN where a rule does not
    apply), so a caller can gather many layers and read them back with one host sync."""
    with torch.no_grad():
        x = output.detach().float()
        nan = x.new_full((), math.nan)
        dead, sat = unit_fractions(x, kind, conv_like)
        mean, std = mean_std(x)
        # A NaN or Inf anywhere makes the mean NaN or Inf; so does a sum past float32's
        # range (~3e38), which is as good as infinite. Cheaper than isfinite(x).all().
        return torch.stack(
            [
                mean,
                std,
                nan if dead is None else dead,
                nan if sat is None else sat,
                (~torch.isfinite(mean)).float(),
            ]
        )


def unit_fractions(
    x: torch.Tensor, kind: str, conv_like: bool, rows: bool = False
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The dead and the saturated fraction of an activation's float output ``x`` (None
    where the rule does not apply to ``kind``). ``rows``: ``x`` stacks outputs of one shape
    along its first axis, and each fraction is a tensor of one per output. A fraction is a
    count over a count (sums of zeros and ones are exact), so each equals the output's own."""
    dead = sat = None
    lead = 1 if rows else 0
    dims = x.dim() - lead
    if kind in DYING_ACTIVATIONS and dims >= 2:
        unit = lead + (1 if conv_like else dims - 1)
        # ReLU outputs are >= 0, so a unit is alive when its largest output is above 0
        # (a max over every other axis: no copy, a third of the cost of != 0 / any).
        peak = x.amax(dim=[d for d in range(lead, x.dim()) if d != unit])
        dead = (peak <= 0).float()
        dead = dead.mean(1) if rows else dead.mean()
    if kind in SATURATING_BOUNDS:
        lo, hi = SATURATING_BOUNDS[kind]
        # outside (lo + margin, hi - margin) = farther than that from the middle: four
        # tensor operations instead of five, no boolean tensors (this runs per module)
        mid, reach = (lo + hi) / 2, (hi - lo) / 2 - SATURATION_MARGIN * (hi - lo)
        far = x.abs() if mid == 0 else (x - mid).abs_()
        far.gt_(reach)
        sat = far.view(len(far), -1).mean(1) if rows else far.mean()
    return dead, sat


def _float(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32 (itself when it is: ``Tensor.float()`` is a call per module)."""
    return x if x.dtype == torch.float32 else x.float()


def input_stats(x: torch.Tensor) -> torch.Tensor | None:
    """The ``INPUT_STATS`` of an input batch: mean, std, feature_mean_absmax,
    feature_std_max, feature_std_min (a feature is a channel when the input has more than two
    axes); None when they do not apply (integer inputs such as token ids, or fewer than two
    examples)."""
    if not x.is_floating_point() or x.dim() < 2 or x.shape[0] < 2:
        return None
    with torch.no_grad():
        x = x.detach().float()
        flat = (
            x.reshape(x.shape[0], -1)
            if x.dim() == 2
            else x.transpose(0, 1).reshape(x.shape[1], -1).T
        )
        # two passes, not Tensor.std's element-by-element Welford update (3-4x slower)
        fmean = flat.mean(0)
        fstd = ((flat - fmean).square_().sum(0) / max(1, flat.shape[0] - 1)).sqrt_()
        mean, std = mean_std(x)
        return torch.stack([mean, std, fmean.abs().max(), fstd.max(), fstd.min()])


def _gradient_norm(grad: torch.Tensor) -> torch.Tensor:
    """The norm of one gradient as a 0-dim tensor, without reading it.

    On a CPU in float32: casting every entry to float64 makes the norm three times as
    costly, a twentieth of a checkup, so the float32 norm is taken and a tiny or non-finite
    one is recounted in float64 once read (``AutogradNorms.recount``), as ``norms`` does. On
    an accelerator, or in another dtype, the float64 norm at once: it is the cheap one there.
    """
    if _recounted(grad):
        return torch.linalg.vector_norm(grad)
    return torch.linalg.vector_norm(grad, dtype=torch.float64)


def _recounted(t: torch.Tensor) -> bool:
    """Whether ``_gradient_norm`` takes a float32 norm of (the gradient of) ``t``."""
    return t.device.type == "cpu" and t.dtype == torch.float32


class AutogradNorms:
    """The gradient norms of ``loss`` by autograd, one per parameter, without writing
    ``.grad`` and without a host sync: ``norms`` maps a parameter's index to its norm, a
    0-dim tensor (unused parameters are missing), read by the caller.

    Each parameter's hook takes the norm and hands autograd a zero of no size in place of
    the gradient, so no more than a layer's gradient is alive at a time: the pass needs less
    memory than a training step, which keeps every gradient. When some norm is a float32 one
    (``_gradient_norm``) the graph is kept, so that ``recount`` can take the few that read
    tiny or non-finite again in float64, from a second backward pass to those parameters
    only; the graph goes with the loss.
    """

    def __init__(self, loss: torch.Tensor, params: Sequence[torch.Tensor]) -> None:
        self.params = list(params)
        keep = any(map(_recounted, self.params))
        self.norms = self._pass(loss, range(len(self.params)), _gradient_norm, keep)
        self._loss = loss if keep else None

    def _pass(
        self,
        loss: torch.Tensor,
        positions: Iterable[int],
        norm: Callable[[torch.Tensor], torch.Tensor],
        keep: bool = False,
    ) -> dict[int, torch.Tensor]:
        found: dict[int, torch.Tensor] = {}
        zeros: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

        def make_hook(i: int) -> Callable[[torch.Tensor], torch.Tensor]:
            def hook(grad: torch.Tensor) -> torch.Tensor:
                # autograd runs hooks with grad mode off: no graph is recorded here
                found[i] = norm(grad)
                key = (grad.dtype, grad.device)
                if key not in zeros:
                    zeros[key] = grad.new_zeros(())
                return zeros[key].expand_as(grad)

            return hook

        chosen = list(positions)
        inputs = [self.params[i] for i in chosen]
        handles = [p.register_hook(make_hook(i)) for i, p in zip(chosen, inputs, strict=True)]
        try:
            torch.autograd.grad(loss, inputs, allow_unused=True, retain_graph=keep)
        finally:
            for handle in handles:
                handle.remove()
        return found

    def recount(self, values: dict[int, float]) -> None:
        """Recompute in float64, in place, the float32 norms in ``values`` (index -> norm as
        read) outside [``TINY_NORM``, inf): NaN compares False, so it is recounted too (and
        stays NaN). A second backward pass and host sync, only when there is one."""
        loss, self._loss = self._loss, None
        again = [
            i
            for i, v in values.items()
            if not TINY_NORM <= v < math.inf and _recounted(self.params[i])
        ]
        if not again or loss is None:
            return
        wide = self._pass(loss, again, lambda g: torch.linalg.vector_norm(g, dtype=torch.float64))
        for i, v in zip(wide, torch.stack(list(wide.values())).tolist(), strict=True):
            values[i] = v


def _squared(norms_by_index: Mapping[int, float], n: int) -> list[float]:
    return [norms_by_index[i] ** 2 if i in norms_by_index else math.nan for i in range(n)]


def global_squares(local: Sequence[torch.Tensor], whole: Sequence[torch.Tensor]) -> torch.Tensor:
    """Squared norms of tensors sharded over the ranks, from this rank's parts: ``local[k]``
    a part of ``whole[k]`` (a DTensor, or a tensor each rank holds whole), or of a tensor
    laid out like it (its gradient, its change). Float64 squares, each weighted by its
    share, all-reduced in one collective: every rank gets the same values."""
    squares = torch.stack(torch._foreach_norm(list(local), 2, dtype=torch.float64)) ** 2
    squares = squares * _shares(whole).to(squares.device)
    dist.all_reduce(squares)
    return squares


def _shares(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per tensor, the fraction of its square each rank contributes to the sum over the
    ranks: 1 for a part sharded over every rank; a part held whole by several ranks
    (replicated, or not a DTensor) counts once, divided by the number that hold it."""
    world = dist.get_world_size()
    shares = []
    for t in tensors:
        d: Any = t
        if not is_dtensor(d):
            shares.append(1.0 / world)
            continue
        held = 1
        for dim, placement in enumerate(d.placements):
            if placement.is_replicate():
                held *= d.device_mesh.size(dim)
        shares.append(1.0 / held)
    return torch.tensor(shares, dtype=torch.float64)


# -- per-layer norms ----------------------------------------------------------------------------


class ParameterIndex:
    """The trainable parameters of each layer, flattened once in layer order.

    ``read()`` gives the per-layer rows of the Trace's layer table: the weight-gradient norm
    (parameters that are not biases), the bias-gradient norm, and the weight norm over all of
    the layer's trainable parameters, bias included.
    """

    def __init__(self, layers: Mapping[str, nn.Module]) -> None:
        seen: set[int] = set()  # a tied parameter belongs to its first layer only
        self.sharded = False  # parameters sharded over the ranks (FSDP): see global_squares
        self.layer_params: dict[str, list[tuple[str, nn.Parameter]]] = {}
        for name, m in layers.items():
            own = [
                (n, p)
                for n, p in m.named_parameters(recurse=False)
                if p.requires_grad and id(p) not in seen
            ]
            seen.update(id(p) for _, p in own)
            self.layer_params[name] = own
        self._flatten()

    def _flatten(self) -> None:
        flat = [
            (p, i, is_bias(n)) for i, ps in enumerate(self.layer_params.values()) for n, p in ps
        ]
        self.params: list[torch.Tensor] = [p for p, _, _ in flat]
        self.layer_of = [i for _, i, _ in flat]
        self.bias = [b for _, _, b in flat]
        self.ids = {id(p) for p in self.params}
        # positions in [*gradients, *params] whose norm was tiny last step (see norms_and)
        self._tiny: set[int] = set()
        self._norm_cache = NormCache()  # how norms_and stacks them
        self._held_weights: list[float] | None = None  # the last weight norms measured
        self._paired = self._pair_up()  # per layer (weight, bias) positions, or None

    def reorder(self, names: Sequence[str]) -> None:
        held = self._held_weights
        self.layer_params = {n: self.layer_params[n] for n in names}
        before = self.params
        self._flatten()
        if held is not None:  # the weight norms held stay the same parameters'
            by_id = dict(zip(map(id, before), held, strict=True))
            self._held_weights = [by_id[id(p)] for p in self.params]

    def read(
        self,
        grad_sq: Sequence[float] | None = None,
        grad_norms: AutogradNorms | None = None,
        also: Sequence[torch.Tensor] = (),
        weights: bool = True,
    ) -> tuple[dict[str, list[float]], bool, list[float]]:
        """The per-layer norm rows, whether any gradient was NaN or Inf, and the values of
        the tensors ``also`` (flattened, in order), read in the same host sync.

        ``grad_sq``: squared gradient norms per parameter (``self.params`` order, NaN for a
        parameter without one) measured by the caller; ``grad_norms``: the norms of a loss's
        gradients by autograd (``AutogradNorms``), read with the weight norms; by default
        the norms of ``.grad``. One host sync in every case (two on the step a norm first
        falls below ``TINY_NORM``: it is read again in float64; two when the weights are
        held and a gradient is not finite: the weights are read then).

        ``weights=False``: the gradients of ``.grad`` are read, and the weight norms are
        those of the last read that measured them (weights move by an update ratio of about
        1e-3 a step, while reading them costs as much as reading the gradients). They are
        measured all the same on the first read, and when a gradient is NaN or Inf: a
        weight can only turn non-finite in an update, and the forward that uses it then
        makes the loss and the gradients non-finite at that step.
        """
        weight_values: list[float] | None = None
        extra: list[float] = []
        if self.sharded and grad_norms is None and grad_sq is None:
            return self._read_sharded(also)
        if grad_norms is not None:
            found = grad_norms.norms
            with torch.no_grad():
                weight_values, read = norms_and(self.params, [*found.values(), *also])
            measured = dict(zip(found, read[: len(found)], strict=True))
            extra = read[len(found) :]
            grad_norms.recount(measured)
            grad_sq = _squared(measured, len(self.params))
        if grad_sq is None:
            grads = [p.grad for p in self.params]
            live = [g for g in grads if g is not None]
            every = len(live) == len(grads)  # the common case: its key costs nothing to hash
            present: Sequence[int] = range(len(grads))
            if not every:
                present = [j for j, g in enumerate(grads) if g is not None]
            held = None if weights else self._held_weights
            with torch.no_grad():
                values, extra = norms_and(
                    live if held is not None else [*live, *self.params],
                    also,
                    self._tiny,
                    self._norm_cache,
                    None if every else tuple(present),
                )
            grad_values = values[: len(present)]
            nonfinite = not all(map(math.isfinite, grad_values))
            if held is None:
                weight_values = self._held_weights = values[len(present) :]
            elif nonfinite:
                with torch.no_grad():
                    weight_values = self._held_weights = norms(self.params)
            else:
                weight_values = held
            if every and self._paired is not None:
                grad_squares = [v * v for v in grad_values]
                return self._paired_rows(grad_squares, weight_values), nonfinite, extra
            squares = {j: v * v for j, v in zip(present, grad_values, strict=True)}
        else:
            squares = {j: v for j, v in enumerate(grad_sq) if not math.isnan(v)}
            grad_values = list(squares.values())
            if weight_values is None:
                with torch.no_grad():
                    weight_values, extra = norms_and(self.params, also)
            self._held_weights = list(weight_values)
        nonfinite = not all(map(math.isfinite, grad_values))
        return self._rows(squares, weight_values), nonfinite, extra

    def _rows(self, squares: Mapping[int, float], weight_values: Sequence[float]) -> Any:
        """The layer rows from squared gradient norms by parameter and the weight norms."""
        if self._paired is not None and len(squares) == len(self.params):
            return self._paired_rows(list(squares.values()), weight_values)
        n = len(self.layer_params)
        w_sq = [math.nan] * n
        b_sq = [math.nan] * n
        for j, sq in squares.items():
            row = b_sq if self.bias[j] else w_sq
            i = self.layer_of[j]
            row[i] = sq if math.isnan(row[i]) else row[i] + sq
        weight_sq = [0.0] * n
        for i, v in zip(self.layer_of, weight_values, strict=True):
            weight_sq[i] += v * v
        return {
            "grad_norm_weight": [math.sqrt(v) for v in w_sq],
            "grad_norm_bias": [math.sqrt(v) for v in b_sq],
            "weight_norm": [math.sqrt(v) for v in weight_sq],
        }

    def _pair_up(self) -> list[tuple[int, int]] | None:
        """Per layer, the positions of its weight and its bias (-1: none), when no layer has
        more than one of each: the common layout, whose rows ``_paired_rows`` builds
        without the general loop (it costs ~40 us a step on a model of 100 tensors)."""
        pairs = [[-1, -1] for _ in self.layer_params]
        for j, (i, b) in enumerate(zip(self.layer_of, self.bias, strict=True)):
            if pairs[i][b] != -1:
                return None
            pairs[i][b] = j
        return [(w, b) for w, b in pairs]

    def _paired_rows(
        self, grad_sq: list[float], weight_values: Sequence[float]
    ) -> dict[str, list[float]]:
        """``read``'s rows for the paired layout and every gradient present: the same sums
        (0 + x is x, x + y is y + x), so the same values bit for bit."""
        assert self._paired is not None
        sqrt, nan = math.sqrt, math.nan
        g = [*grad_sq, nan]  # position -1: a layer without that parameter reads NaN
        w = [v * v for v in weight_values]
        w.append(0.0)  # position -1: no such parameter adds nothing to the weight norm
        return {
            "grad_norm_weight": [sqrt(g[a]) for a, _ in self._paired],
            "grad_norm_bias": [sqrt(g[b]) for _, b in self._paired],
            "weight_norm": [sqrt(w[a] + w[b]) for a, b in self._paired],
        }

    def local(self) -> list[torch.Tensor]:
        """Each parameter's part on this rank (its shard; the whole of an unsharded one)."""
        return [local_part(p) for p in self.params]

    def global_squares(self, local: Sequence[torch.Tensor], at: Sequence[int]) -> torch.Tensor:
        """``global_squares`` of ``local[k]``, a part of (or of the gradient of)
        ``self.params[at[k]]``."""
        return global_squares(local, [self.params[i] for i in at])

    def _read_sharded(
        self, also: Sequence[torch.Tensor]
    ) -> tuple[dict[str, list[float]], bool, list[float]]:
        """``read`` for sharded parameters: every norm global, from one all-reduce of the
        ranks' squares, and one host sync."""
        grads = [p.grad for p in self.params]
        present = [j for j, g in enumerate(grads) if g is not None]
        local = [local_part(g) for g in grads if g is not None]
        n = len(self.params)
        with torch.no_grad():
            squares = self.global_squares([*local, *self.local()], [*present, *range(n)])
            tail = [t.reshape(-1).to(squares.device, torch.float64) for t in also]
            read = torch.cat([squares, *tail]).tolist()  # the one host sync
        k = len(present)
        grad_sq = dict(zip(present, read[:k], strict=True))
        weight_values = [math.sqrt(v) for v in read[k : k + n]]
        nonfinite = any(not math.isfinite(v) for v in grad_sq.values())
        return self._rows(grad_sq, weight_values), nonfinite, read[k + n :]


# -- one observed forward pass ------------------------------------------------------------------


@dataclass
class WalkResult:
    """What one forward pass showed, as floats."""

    order: list[str] = field(default_factory=list)  # parameter layers in the order they ran
    act_order: list[str] = field(default_factory=list)  # activation modules likewise
    act_sources: dict[str, str | None] = field(default_factory=dict)  # activation -> feeder
    outputs: dict[str, list[float]] = field(default_factory=dict)  # layer -> [mean, std]
    acts: dict[str, list[float]] = field(default_factory=dict)  # activation -> ACT_STATS
    input: list[float] | None = None  # INPUT_STATS of the first input
    # Activations applied as functions, seen in what the next layer receives: their name
    # (``<layer>.input``) -> the family the values show (relu, sigmoid, tanh)
    functional: dict[str, str] = field(default_factory=dict)


@dataclass
class _Rows:
    """Same-shaped small outputs of one kind, copied as a forward produces them into the
    rows of one buffer, so that their statistics are a few operations over the stack."""

    buf: torch.Tensor | None = None
    views: list[torch.Tensor] = field(default_factory=list)  # the buffer's rows
    extra: list[torch.Tensor] = field(default_factory=list)  # copies past its rows
    names: list[str] = field(default_factory=list)  # whose output each row is


class WalkRows:
    """The buffers a caller that walks forward after forward keeps between walks (the
    Probe, while attached): one per shape and kind of small output the last walk filled,
    as many rows as it filled. A fresh stack each walk would come from the system as new
    pages; the last walk's only, so that batches of ever new sizes keep one set, not one
    per size seen."""

    def __init__(self) -> None:
        self.groups: dict[tuple[Any, ...], _Rows] = {}


class ForwardWalk:
    """Observe one forward pass of ``model``: a context manager around the forward call.

    One global module hook (not one per module: a module with its own hook takes torch's
    slow call path, and a global one is there only while the walk is) sees every module in
    execution order. For each parameter layer it keeps the output's mean and std, for each
    activation module its ``ACT_STATS`` and the parameter layer that ran last before it (its
    source). The statistics stay tensors until ``read()``, which brings them back with one
    host sync. A module that runs twice is measured the first time.

    A small contiguous float output (at most ``STACK_NUMEL`` entries) is copied as it comes
    into a row of a buffer of its shape and kind (one operation per module), and when the
    forward is over each buffer's statistics are a few operations over all its rows
    (``row_mean_sqdev``, ``unit_fractions(rows=True)``): the same values, bit for bit, as
    3-9 operations per module, a tenth of the cost on a deep narrow model. ``rows``: the
    buffers to reuse (``WalkRows``); by default the walk's own.

    Activations applied as functions (``F.relu``, ``torch.sigmoid``) have no module to hook:
    they are measured from what the next parameter layer receives, when no activation
    module ran since the previous parameter layer. The values tell the family
    (``received_family``); an input that fits none (a norm's output, a raw linear output)
    is not an activation and is left out.
    """

    def __init__(
        self,
        layers: Mapping[str, nn.Module],
        acts: Mapping[str, tuple[nn.Module, str]],
        rows: WalkRows | None = None,
    ) -> None:
        self._rows = rows if rows is not None else WalkRows()
        self._filling: dict[tuple[Any, ...], _Rows] = {}  # the groups this walk fills
        self._layers = dict(layers)
        self._layer_of = {m: n for n, m in layers.items()}
        self._last_layer: str | None = None  # the parameter layer that ran most recently
        self._last_output: tuple[int, int] | None = None  # ... its output's (data_ptr, numel)
        self._act_of = {m: (n, kind) for n, (m, kind) in acts.items()}
        self._handle: Any = None
        self._ran: set[str] = set()  # res.order as a set
        # Each observed module's statistics as one tensor, or a group of rows' as one per
        # statistic (as few tensors as layers are kept through the backward pass), read
        # back by position; the sums of squared
        # deviations (their positions and degrees of freedom) become stds all at once there.
        self._kept: list[torch.Tensor] = []
        self._n_kept = 0
        self._sq_at: list[int] = []
        self._dof: list[int] = []
        self._outputs: dict[str, tuple[int, ...]] = {}  # layer -> (mean, sqdev) positions
        self._acts: dict[str, tuple[int, ...]] = {}  # ... mean, sqdev, dead, sat
        self._received: dict[str, torch.Tensor] = {}  # <layer>.input -> RECEIVED_STATS
        self._act_since_layer = False
        self._input: torch.Tensor | None = None
        self.result = WalkResult()

    def __enter__(self) -> ForwardWalk:
        self._handle = register_module_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._close_rows()  # now, so that the buffers are free for the next walk

    def record_input(self, x: Any) -> None:
        if isinstance(x, torch.Tensor):
            self._input = input_stats(x)

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        res = self.result
        name = self._layer_of.get(module)
        if name is not None:
            self._note_received(name, args)
            self._last_layer, self._act_since_layer = name, False
            out = output[0] if isinstance(output, tuple | list) else output
            self._last_output = (
                (out.data_ptr(), out.numel()) if isinstance(out, torch.Tensor) else None
            )
            if name in self._ran:
                return
            self._ran.add(name)
            res.order.append(name)
            measured = isinstance(out, torch.Tensor) and out.is_floating_point()
            if measured and not self._stash(out, name, None, False):
                self._outputs[name] = self._keep(_float(out.detach()))
            return
        act = self._act_of.get(module)
        if act is None or not isinstance(output, torch.Tensor):
            return
        self._act_since_layer = True
        aname, kind = act
        if aname in self._acts:
            return
        src = self._last_layer
        res.act_order.append(aname)
        res.act_sources[aname] = src
        conv_like = isinstance(self._layers.get(src or ""), CHANNEL_FIRST_TYPES)
        if output.is_floating_point() and self._stash(output, aname, kind, conv_like):
            return
        # activation_stats, its tensors kept apart until read() (detached: no graph)
        x = _float(output.detach())
        self._acts[aname] = self._keep(x, *unit_fractions(x, kind, conv_like))

    def _stash(self, out: torch.Tensor, name: str, kind: str | None, conv_like: bool) -> bool:
        """Copy a small contiguous output into its group's next row (``kind`` None: a
        layer's output, else an activation's); False when it is measured alone."""
        n = out.numel()
        if not 2 <= n <= STACK_NUMEL or not out.is_contiguous():
            return False
        key = (out.shape, out.device, kind, conv_like and kind in DYING_ACTIVATIONS)
        group = self._filling.get(key)
        if group is None:
            group = self._filling[key] = self._rows.groups.setdefault(key, _Rows())
            group.names, group.extra = [], []
        k = len(group.names)
        x = out.detach()
        if k < len(group.views):
            group.views[k].copy_(x)
        else:
            group.extra.append(x.to(torch.float32, copy=True))
        group.names.append(name)
        # a place in the walk's order; the positions come when the forward is over
        (self._outputs if kind is None else self._acts)[name] = ()
        return True

    def _close_rows(self) -> None:
        """The statistics of every group of rows this walk filled, kept like ``_keep``'s."""
        filling, self._filling = self._filling, {}
        if filling:  # the buffers of shapes this walk did not produce are dropped
            self._rows.groups = dict(filling)
        for (shape, _, kind, conv_like), group in filling.items():
            n, names = len(group.names), group.names
            if group.extra:  # more rows than the buffer has: a larger one, for next time
                full = [group.buf[: len(group.views)]] if group.buf is not None else []
                # a normal tensor even when this runs in inference mode (a walk that ended
                # at an evaluation's forward): the next walks write into it
                with torch.inference_mode(False):
                    group.buf = torch.cat([*full, torch.stack(group.extra)])
                    group.views = list(group.buf.unbind(0))
                group.extra = []
            assert group.buf is not None
            x = group.buf[:n]
            mean, sqdev = row_mean_sqdev(x.view(n, -1))
            dead, sat = unit_fractions(x, kind, conv_like, rows=True) if kind else (None, None)
            base, at = self._n_kept, []
            for t in (mean, sqdev, dead, sat):
                at.append(-1 if t is None else base)
                base += 0 if t is None else n
            self._kept += [t for t in (mean, sqdev, dead, sat) if t is not None]
            self._n_kept = base
            self._sq_at += range(at[1], at[1] + n)
            self._dof += [math.prod(shape) - 1] * n
            for i, name in enumerate(names):
                where = tuple(-1 if a < 0 else a + i for a in at)
                if kind is None:
                    self._outputs[name] = where[:2]
                else:
                    self._acts[name] = where
            group.names = []

    def _keep(self, x: torch.Tensor, *more: torch.Tensor | None) -> tuple[int, ...]:
        """Keep ``mean_std(x)`` (as mean and sum of squared deviations) and the 0-dim
        statistics ``more`` for read(), in one tensor; their positions (-1: none, which
        read() turns into a std of 0.0 or NaN)."""
        mean, sqdev = mean_sqdev(x)
        parts = [mean, sqdev, *more]
        present = [t for t in parts if t is not None]
        at, k = [], self._n_kept
        for t in parts:
            at.append(-1 if t is None else k)
            k += t is not None
        if sqdev is not None:
            self._sq_at.append(at[1])
            self._dof.append(x.numel() - 1)
        self._kept.append(torch.stack(present))
        self._n_kept = k
        return tuple(at)

    def _note_received(self, name: str, args: Any) -> None:
        """What ``name`` receives, when a function may have applied an activation to it."""
        src = self._last_layer
        key = f"{name}.input"
        if src is None or self._act_since_layer or key in self._received or src == name:
            return
        x = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if x is None or not x.is_floating_point() or x.dim() < 2:
            return
        if (x.data_ptr(), x.numel()) == self._last_output:
            return  # the previous layer's output itself (or a view of it): no function ran
        conv_like = isinstance(self._layers.get(src), CHANNEL_FIRST_TYPES)
        self._received[key] = received_stats(x, conv_like)
        self.result.act_sources[key] = src

    def flat(self) -> torch.Tensor | None:
        """The statistics still on the device, as one flat tensor (None when there are none):
        for a caller that reads them together with other tensors, into ``read(values)``."""
        self._close_rows()
        tensors = [*self._received.values()]
        if self._input is not None:
            tensors.append(self._input)
        if self._kept:
            device = self._kept[0].device
            kept = torch.cat([t.to(device) for t in self._kept])
            tensors.insert(0, kept)
            if self._sq_at:
                dof = torch.tensor(self._dof, dtype=kept.dtype, device=device)
                tensors.insert(1, (kept[self._sq_at] / dof).sqrt())  # as mean_std does
        if not tensors:
            return None
        device = tensors[0].device
        return torch.cat([t.reshape(-1).to(device) for t in tensors])

    def read(self, values: list[float] | None = None) -> WalkResult:
        """The statistics as floats: ``values`` read from ``flat()``, else read here (one
        host sync)."""
        res = self.result
        n_kept, n_std = self._n_kept, len(self._sq_at)
        if values is None:
            flat = self.flat()
            values = [] if flat is None else flat.tolist()
        if values:
            scalars = values[:n_kept]
            std_at = dict(zip(self._sq_at, values[n_kept : n_kept + n_std], strict=True))
            nan = math.nan

            def std(i: int) -> float:
                return std_at[i] if i >= 0 else 0.0

            for name, (m, s) in self._outputs.items():
                res.outputs[name] = [scalars[m], std(s)]
            for name, (m, s, d, f) in self._acts.items():
                mean = scalars[m]
                res.acts[name] = [
                    mean,
                    std(s),
                    scalars[d] if d >= 0 else nan,
                    scalars[f] if f >= 0 else nan,
                    0.0 if math.isfinite(mean) else 1.0,  # activation_stats' nonfinite
                ]
            k = n_kept + n_std
            for name in self._received:
                family, stats = received_family(values[k : k + len(RECEIVED_STATS)])
                k += len(RECEIVED_STATS)
                if family is None:
                    res.act_sources.pop(name, None)
                    continue
                res.functional[name] = family
                res.acts[name] = stats
            if self._input is not None:
                res.input = values[k : k + len(INPUT_STATS)]
        self._outputs, self._acts, self._received, self._input = {}, {}, {}, None
        self._kept, self._n_kept, self._sq_at, self._dof = [], 0, [], []
        return res


# What a layer receives, for telling a functional activation's family by its values.
RECEIVED_STATS = ["min", "max", "dead_frac", "sigmoid_sat", "tanh_sat"]


SATURATION_SAMPLE = 8192  # saturated fractions of a received input from ~this many values


def received_stats(x: torch.Tensor, conv_like: bool) -> torch.Tensor:
    """``RECEIVED_STATS`` of a layer's input, as one tensor (no host sync).

    Two passes over the whole input, for what must be exact: its minimum and maximum (the
    family) and each unit's largest value (a dead unit is zero for every example). The
    saturated fractions are estimated from an evenly strided sample of about
    ``SATURATION_SAMPLE`` values (their standard error is below 0.6 points), since most
    inputs measured here turn out to be no activation at all.
    """
    with torch.no_grad():
        x = x.detach().float()
        unit = 1 if conv_like else x.dim() - 1
        peak = x.amax(dim=[d for d in range(x.dim()) if d != unit])
        low, high = torch.aminmax(x)
        flat = x.reshape(-1)
        sample = flat[:: max(1, flat.numel() // SATURATION_SAMPLE)]
        sig = ((sample < SATURATION_MARGIN) | (sample > 1 - SATURATION_MARGIN)).float().mean()
        tanh = (sample.abs() > 1 - 2 * SATURATION_MARGIN).float().mean()  # 1% of the range
        return torch.stack([low, high, (peak <= 0).float().mean(), sig, tanh])


def received_family(values: list[float]) -> tuple[str | None, list[float]]:
    """The activation family a layer's input shows, and its ``ACT_STATS``.

    relu: nothing below 0 and a minimum of exactly 0; sigmoid: inside [0, 1] and either
    above 0 everywhere or reaching exactly 1 too (float32's sigmoid rounds to exactly 0 and
    1 deep in its tails, a ReLU does not stop at 1); tanh: inside [-1, 1] with negative
    values. Anything else (a norm's output, a raw linear output spread past +-1) is no
    activation: None.
    """
    low, high, dead, sig, tanh = values
    nan = math.nan  # mean and std are not measured for these: ACT_STATS keeps their place
    if not (math.isfinite(low) and math.isfinite(high)):
        return None, []
    if (low > 0.0 and high <= 1.0) or (low == 0.0 and high == 1.0):
        return "sigmoid", [nan, nan, nan, sig, 0.0]
    if low == 0.0:
        return "relu", [nan, nan, dead, nan, 0.0]
    if -1.0 <= low < 0.0 and high <= 1.0:
        return "tanh", [nan, nan, nan, tanh, 0.0]
    return None, []


# -- what the targets say about the task ----------------------------------------------------------


def output_tensor(output: Any) -> torch.Tensor | None:
    """The prediction tensor in a forward's output: the tensor itself, a dict's (or a
    Hugging Face ``ModelOutput``'s) ``logits``, or the first tensor of a tuple; None when
    there is none."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        for key in ("logits", "out", "output"):
            if isinstance(output.get(key), torch.Tensor):
                return output[key]
        return None
    if isinstance(output, tuple | list):
        return next((o for o in output if isinstance(o, torch.Tensor)), None)
    return None


def class_axis(prediction: torch.Size, targets: torch.Size) -> int | None:
    """Which axis of a prediction holds the classes of per-position class targets: 1 for
    (batch, classes, ...) against (batch, ...), the last for (batch, time, classes) against
    (batch, time); None when the shapes do not fit either."""
    if len(prediction) != len(targets) + 1:
        return None
    if prediction[:1] + prediction[2:] == targets:
        return 1
    if prediction[:-1] == targets:
        return len(prediction) - 1
    return None


IGNORE_INDEX = -100  # torch's and Hugging Face's label for a position that does not count


class TargetTally:
    """The task, the classes and their counts (or the targets' variance), from the targets
    of the batches a run sees.

    Counts accumulate on the targets' device and are read back only by ``facts()``, so
    tallying costs no host sync per step. Label positions marked ``IGNORE_INDEX`` (padding,
    prompt tokens) are not counted.
    """

    def __init__(self, task: str | None = None) -> None:
        self.task = task
        self.n_classes: int | None = None
        self.per_position: bool | None = None
        self._counts: torch.Tensor | None = None
        self._moments: torch.Tensor | None = None  # n, sum, sum of squares (float64)
        self._kept: list[float] | None = None  # pending()'s values, read since the last add

    def add(self, targets: torch.Tensor, prediction: torch.Size | None = None) -> None:
        y = targets.detach()
        self._kept = None
        if self.task is None:
            self.task = _infer_task(y, prediction)
        if self.task in ("classification", "binary"):
            self._add_labels(y, prediction)
        else:
            v = y.double().reshape(-1)
            m = torch.stack([v.new_tensor(float(v.numel())), v.sum(), (v * v).sum()])
            self._moments = m if self._moments is None else self._moments + m

    def _add_labels(self, y: torch.Tensor, prediction: torch.Size | None) -> None:
        labels = (y > 0.5).long().reshape(-1) if self.task == "binary" else y.long().reshape(-1)
        axis = class_axis(prediction, y.shape) if prediction is not None else None
        if prediction is not None and len(prediction) == y.dim() + 1 and y.dim() >= 2:
            # per-position labels, whatever the batch size the prediction was made on
            self.per_position = prediction[2:] == y.shape[1:] or prediction[1:-1] == y.shape[1:]
        if self.task == "binary":
            n = 2
        elif axis is not None and prediction is not None:
            n = int(prediction[axis])
        else:  # no prediction to read the classes from: the labels seen (one host sync)
            n = int(labels.max()) + 1 if labels.numel() else 0
        n = max(n, self.n_classes or 0)
        # Ignored positions and out-of-range labels land in bin n, which facts() drops.
        bins = torch.where(labels >= 0, labels, n).clamp(max=n)
        if self._counts is None or len(self._counts) != n + 1:  # first batch, or more classes
            counts = torch.zeros(n + 1, dtype=torch.long, device=y.device)
            if self._counts is not None:
                old = len(self._counts) - 1
                counts[:old] += self._counts[:old]
                counts[n] += self._counts[old]
            self._counts, self.n_classes = counts, n
        self._counts.scatter_add_(0, bins, torch.ones_like(bins))  # in place: every step

    def pending(self) -> torch.Tensor | None:
        """What ``facts()`` reads, as one float64 tensor on the device (the counts, then the
        moments), for a caller that reads it with other values and hands them back to
        ``keep``; None when nothing was tallied."""
        parts = [t.to(torch.float64) for t in (self._counts, self._moments) if t is not None]
        return torch.cat(parts) if parts else None

    def keep(self, values: list[float]) -> None:
        """The values of ``pending()``, read: ``facts()`` uses them until the next ``add``."""
        self._kept = list(values)

    def facts(self) -> dict[str, Any]:
        """Task, n_classes, class_counts or target_var, and chance_loss (one host sync, none
        when ``keep`` was given the values since the last ``add``)."""
        out: dict[str, Any] = {"task": self.task}
        read = self._kept
        if read is None:
            pending = self.pending()
            read = pending.tolist() if pending is not None else []
        if self._counts is not None:
            counts = [int(c) for c in read[: len(self._counts) - 1]]
            out.update(n_classes=len(counts), class_counts=counts)
            if self.per_position is not None:
                out["targets_per_position"] = self.per_position
            if len(counts) >= 2:
                out["chance_loss"] = math.log(len(counts))
        if self._moments is not None:
            n, total, squares = read[-3:]
            if n > 1:
                var = (squares - total * total / n) / (n - 1)
                out.update(target_var=max(0.0, var), chance_loss=max(0.0, var))
        return out


def _infer_task(y: torch.Tensor, prediction: torch.Size | None) -> str:
    """classification for integer targets; binary for float 0/1 targets against one logit per
    example; regression otherwise."""
    if not y.is_floating_point():
        return "classification"
    one_logit = prediction is not None and (
        tuple(prediction) == tuple(y.shape) or tuple(prediction) == (*y.shape, 1)
    )
    if one_logit and bool(((y == 0) | (y == 1)).all()):
        return "binary"
    return "regression"

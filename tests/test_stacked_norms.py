"""The Probe's per-step norms read in stacks (``stats.norms_and`` with a ``NormCache``) are
the norms plain PyTorch gives for each tensor alone, bit for bit: float32 for most, float64
for the tiny ones; whether a tensor is stacked, read alone (large, non-contiguous) or moved
to another stack when its shape changes."""

from __future__ import annotations

import math

import torch
from torch import nn

from deepdoctor.probe import Probe
from deepdoctor.stats import STACK_NUMEL, TINY_NORM, NormCache, norms_and

SIDE = 1e-30  # the side path's share of the loss: its gradients are ~1e-30, below TINY_NORM


class _Net(nn.Module):
    """Six 16 x 16 layers (stacked), a layer too large to stack, a transposed (so
    non-contiguous) weight, and three side layers whose gradients are tiny."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.ModuleList(nn.Linear(16, 16) for _ in range(6))
        self.big = nn.Linear(16, STACK_NUMEL // 16 + 1)
        self.odd = nn.Linear(16, 16)
        self.odd.weight = nn.Parameter(torch.randn(16, 16).t())
        self.side = nn.ModuleList(nn.Linear(16, 16) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for layer in self.body:
            h = torch.tanh(layer(h))
        main = self.big(h).mean() + self.odd(h).pow(2).mean()
        side = sum(layer(x).pow(2).mean() for layer in self.side)
        return main + SIDE * side


def _norm(t: torch.Tensor) -> float:
    """A tensor's norm as the Probe defines it: float32, or float64 when that is tiny."""
    t = t.detach()
    v = float(torch.linalg.vector_norm(t))
    return float(torch.linalg.vector_norm(t, dtype=torch.float64)) if v < TINY_NORM else v


def _sq_root(v: float) -> float:
    return math.sqrt(v * v)  # a layer's norm from its one tensor, summed as the Probe sums


def _expected(net: _Net) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {"grad_norm_weight": [], "grad_norm_bias": [], "weight_norm": []}
    for layer in [*net.body, net.big, net.odd, *net.side]:
        w, b = layer.weight, layer.bias
        rows["grad_norm_weight"].append(_sq_root(_norm(w.grad)))
        rows["grad_norm_bias"].append(_sq_root(_norm(b.grad)))
        rows["weight_norm"].append(math.sqrt(_norm(w) * _norm(w) + _norm(b) * _norm(b)))
    return rows


def test_stacked_norms_are_each_tensors_own_norm_bit_for_bit() -> None:
    torch.manual_seed(0)
    net = _Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x = torch.randn(32, 16)
    expected = []
    with Probe(net, every=3) as probe:  # weights measured at steps 0 and 3, held between
        for step in range(6):
            if step == 3:  # a bias of another shape (broadcast alike) leaves its stack
                with torch.no_grad():
                    net.body[2].bias.data = net.body[2].bias.data.reshape(1, 16).clone()
            opt.zero_grad()
            net(x).backward()
            expected.append(_expected(net))
            opt.step()
    trace = probe.trace
    names = [f"body.{i}" for i in range(6)] + ["big", "odd"] + [f"side.{i}" for i in range(3)]
    assert trace.layers == names
    assert net.odd.weight.grad is not None and not net.odd.weight.grad.is_contiguous()
    tiny = trace.layer.array("grad_norm_weight")[:, -3:]
    assert (tiny > 0).all() and (tiny < TINY_NORM).all()  # read in float64, not underflowed
    for stat in expected[0]:
        got = trace.layer.array(stat).tolist()
        held = [expected[step - step % 3] for step in range(6)] if stat == "weight_norm" else None
        assert got == [row[stat] for row in held or expected], stat


def test_a_cache_gives_the_values_of_a_fresh_plan() -> None:
    # the same tensors read with a cache and without, as one turns tiny and back
    g = torch.Generator().manual_seed(1)
    tensors = [torch.randn(8, 8, generator=g) for _ in range(5)] + [torch.randn(3, generator=g)]
    base = tensors[1]
    cache, tiny = NormCache(), set[int]()
    for scale in (1.0, 1e-30, 1e-30, 1.0, 1.0):
        tensors[1] = base * scale
        was_tiny = set(tiny)
        values = norms_and(tensors, [], tiny, cache)[0]
        assert values == norms_and(tensors, [], set(was_tiny))[0]
        if not (1 in was_tiny and scale == 1.0):  # a norm tiny the step before: float64
            assert values == [_norm(t) for t in tensors]
        assert tiny == ({1} if scale < 1 else set())


def _update_norm(delta: torch.Tensor) -> float:
    """An update's norm as the Probe records it: float32 (so a float64 layer's is rounded
    to float32), recounted in float64 when that is tiny."""
    v = float(torch.linalg.vector_norm(delta).float())
    return float(torch.linalg.vector_norm(delta, dtype=torch.float64)) if v < TINY_NORM else v


def test_update_ratios_read_from_stacked_snapshots_are_each_layers_own() -> None:
    # every=1: each step's snapshot goes into stats.StackedCopies (the six 16 x 16 layers
    # as rows of one stack); one layer in float64, whose update norm is float32 as before
    torch.manual_seed(0)
    net = _Net()
    net.body[4].double()
    net.forward = _mixed_forward.__get__(net)  # type: ignore[method-assign]
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    x = torch.randn(32, 16)
    expected = []
    with Probe(net, every=1) as probe:
        for _ in range(4):
            opt.zero_grad()
            net(x).backward()
            layers = [*net.body, net.big, net.odd, *net.side]
            before = [[p.detach().clone() for p in (m.weight, m.bias)] for m in layers]
            opt.step()
            after = [[p.detach() for p in (m.weight, m.bias)] for m in layers]
            expected.append(
                [
                    math.sqrt(sum(_update_norm(b - a) ** 2 for b, a in zip(bs, as_, strict=True)))
                    for bs, as_ in zip(before, after, strict=True)
                ]
            )
    trace = probe.trace
    weight_norms = trace.layer.array("weight_norm")
    got = trace.updates.array("update_ratio")
    assert got.shape == (4, len(trace.layers))
    for step in range(4):
        assert got[step].tolist() == [
            moved / w for moved, w in zip(expected[step], weight_norms[step], strict=True)
        ]


def _mixed_forward(self: _Net, x: torch.Tensor) -> torch.Tensor:
    """``_Net.forward`` with its fifth body layer in float64."""
    h = x
    for i, layer in enumerate(self.body):
        h = torch.tanh(layer(h.double()).float()) if i == 4 else torch.tanh(layer(h))
    main = self.big(h).mean() + self.odd(h).pow(2).mean()
    side = sum(layer(x).pow(2).mean() for layer in self.side)
    return main + SIDE * side

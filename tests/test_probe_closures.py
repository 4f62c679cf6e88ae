"""The Probe reads each step's own gradients: plain loops, closures, accumulation, LBFGS.

Every expected number is recounted in plain PyTorch, at the point where the optimizer uses
the gradients (inside the closure, after its backward; or just before a plain step).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from deepdoctor.probe import Probe

STEPS = 6


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 5, generator=g), torch.randint(0, 3, (32,), generator=g)


def _weight_grad_norms(net: nn.Module) -> list[float]:
    return [float(net[i].weight.grad.norm()) for i in (0, 2)]


def _closure_run(
    make_opt: Callable[[list[nn.Parameter]], torch.optim.Optimizer], probe: bool, keyword: bool
) -> tuple[nn.Module, list[list[float]], np.ndarray | None, list[float]]:
    """Train with ``opt.step(closure)``; the norms the optimizer used (the closure's first
    call of each step) recounted by hand."""
    net = _net()
    x, y = _data()
    opt = make_opt(list(net.parameters()))
    expected: list[list[float]] = []
    losses: list[float] = []
    ctx = Probe(net, every=1) if probe else None
    if ctx is not None:
        ctx.attach()
    for _ in range(STEPS):
        first = [True]

        def closure(first: list[bool] = first) -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            if first[0]:
                expected.append(_weight_grad_norms(net))
                losses.append(float(loss.detach()))
                first[0] = False
            return loss

        opt.step(closure=closure) if keyword else opt.step(closure)  # Lightning: keyword
        if ctx is not None:
            ctx.record_loss(losses[-1])
    grads = None
    if ctx is not None:
        ctx.detach()
        grads = ctx.trace.grad_norms()
        assert list(ctx.trace.loss()) == pytest.approx(losses)
    return net, expected, grads, losses


@pytest.mark.parametrize("keyword", [False, True], ids=["positional", "keyword"])
@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9),
        lambda p: torch.optim.LBFGS(p, lr=0.5, max_iter=4),
    ],
    ids=["sgd-closure", "lbfgs"],
)
def test_closure_gradients_are_the_steps_own(make_opt: Callable, keyword: bool) -> None:
    net, expected, grads, _ = _closure_run(make_opt, probe=True, keyword=keyword)
    assert grads is not None and grads.shape == (STEPS, 2)
    assert not np.isnan(grads).any()  # the first row too: no step read before its backward
    np.testing.assert_allclose(grads, np.array(expected), rtol=1e-5)
    # the gradients change from step to step, so a row one step late would not match
    assert abs(expected[1][0] - expected[0][0]) > 1e-3 * expected[0][0]
    # the probe observes only: the same weights with and without it, bit for bit
    plain, *_ = _closure_run(make_opt, probe=False, keyword=keyword)
    for a, b in zip(net.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)


def test_accumulated_gradients_are_read_once_per_step() -> None:
    net = _net()
    reference = copy.deepcopy(net)
    x, y = _data()
    opt = torch.optim.SGD(net.parameters(), lr=0.3)
    expected = []
    with Probe(net, opt, every=1) as probe:
        for _ in range(3):
            opt.zero_grad()
            for half in (slice(0, 16), slice(16, 32)):  # two micro-batches per step
                (nn.functional.cross_entropy(net(x[half]), y[half]) / 2).backward()
            expected.append(_weight_grad_norms(net))
            opt.step()
    np.testing.assert_allclose(probe.trace.grad_norms(), np.array(expected), rtol=1e-5)
    # the summed half-batch gradients are the full batch's (a recount on a copy)
    nn.functional.cross_entropy(reference(x), y).backward()
    assert expected[0] == pytest.approx(_weight_grad_norms(reference), rel=1e-5)


def test_plain_loop_reads_before_the_update() -> None:
    net = _net()
    x, y = _data()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    expected, weights = [], []
    with Probe(net, every=1) as probe:  # weight norms measured on every step, not held
        for _ in range(STEPS):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            expected.append(_weight_grad_norms(net))
            weights.append(
                float(torch.cat([p.detach().reshape(-1) for p in net[0].parameters()]).norm())
            )
            opt.step()
    np.testing.assert_allclose(probe.trace.grad_norms(), np.array(expected), rtol=1e-5)
    np.testing.assert_allclose(probe.trace.layer.array("weight_norm")[:, 0], weights, rtol=1e-5)

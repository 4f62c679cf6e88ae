"""Mixed precision on CPU: bf16 autocast gradients read right; with a GradScaler (fp16
autocast) the gradients read unscaled, skipped steps counted, an overflowing scale judged.
Every expected number is recounted in plain PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import deepdoctor as dd
from deepdoctor.probe import Probe


def _setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    g = torch.Generator().manual_seed(1)
    return net, torch.randn(64, 8, generator=g), torch.randint(0, 4, (64,), generator=g)


def _norms(net: nn.Module) -> list[float]:
    return [float(net[i].weight.grad.norm()) for i in (0, 2)]


def test_bf16_autocast() -> None:
    net, x, y = _setup()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    expected = []
    with Probe(net) as probe:
        for _ in range(5):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            expected.append(_norms(net))
            opt.step()
            probe.record_loss(loss)
    np.testing.assert_allclose(probe.trace.grad_norms(), expected, rtol=1e-6)
    assert np.isfinite(probe.trace.loss()).all()


def _scaled_run(init_scale: float, steps: int = 12) -> tuple[Probe, list[list[float]], int]:
    net, x, y = _setup()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    stepped = []  # the optimizer's own count of the steps it took
    opt.register_step_post_hook(lambda *a: stepped.append(_norms(net)))
    with Probe(net, scaler=scaler) as probe:
        for _ in range(steps):
            with torch.autocast("cpu", dtype=torch.float16):
                loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)  # unscales the gradients in place, then steps (or skips)
            scaler.update()
            probe.record_loss(loss)
    return probe, stepped, steps - len(stepped)


def test_gradscaler_gradients_are_unscaled_and_skips_counted() -> None:
    probe, stepped, skipped = _scaled_run(init_scale=2.0**24)  # overflows fp16 at first
    trace = probe.trace
    assert skipped > 0 and trace.n_steps == len(stepped)
    assert trace.facts.skipped_steps == skipped
    assert trace.facts.loss_scale_start == 2.0**24
    # the gradients the optimizer used, unscaled (recounted after the step: SGD leaves .grad)
    np.testing.assert_allclose(trace.grad_norms(), stepped, rtol=1e-6)
    assert trace.grad_norms().max() < 100  # not multiplied by a scale in the millions


@pytest.mark.parametrize("init_scale, severity", [(2.0**60, "warning"), (2.0**10, None)])
def test_a_scaler_that_keeps_skipping_is_a_finding(init_scale: float, severity: str) -> None:
    probe, _, skipped = _scaled_run(init_scale, steps=60)
    found = [f for f in dd.detect(probe.trace) if f.kind == "nonfinite"]
    if severity is None:
        assert skipped == 0 and not found
        return
    assert skipped >= 40  # about 45 halvings from 2^60 to below fp16's reach
    assert [f.severity for f in found] == [severity]
    assert found[0].evidence["skipped_steps"] == skipped
    assert found[0].remedies[0] == "gradient_clipping"


def test_a_collapsed_scale_is_critical() -> None:
    trace = dd.Trace(["fc"], {"fc": "Linear"})
    trace.facts.skipped_steps, trace.facts.loss_scale_start = 30, 65536.0
    trace.facts.loss_scale_min = 2.0**-14  # 30 halvings: the gradients overflow unscaled
    (found,) = dd.detect(trace)
    assert found.kind == "nonfinite" and found.severity == "critical"
    assert "underflow" in found.summary and found.evidence["attempted_steps"] == 30

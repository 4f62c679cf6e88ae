"""On a CUDA device (issue 15, item 7): the Probe and the checkup read once a step, agree with
the same model on the CPU, and a GradScaler's fp16 gradients read unscaled with its skipped
steps counted. Skipped without one. Written on a machine without a GPU, they have run there
only with DEVICE set to "cpu" (a check of the tests' own logic); a GPU run is their first."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_host_syncs import checkup_reads, counted_reads, net
from torch import nn

import deepdoctor as dd

DEVICE = "cuda"
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: these tests need a GPU"
)


def on(device: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model, X, y = net()
    return model.to(device), X.to(device), y.to(device)


def probe_run(device: str, reads: list[int], monkeypatch: pytest.MonkeyPatch) -> dd.Trace:
    model, X, y = on(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with dd.Probe(model, optimizer=opt, every=2) as probe:
        for _ in range(5):
            with counted_reads(monkeypatch) as counts:
                loss = nn.functional.cross_entropy(model(X), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                probe.record_loss(loss, targets=y)
            reads.append(sum(counts.values()))
    return probe.trace


def test_the_probe_reads_once_a_step_and_agrees_with_the_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[int] = []
    there = probe_run(DEVICE, reads, monkeypatch)
    here = probe_run("cpu", [], monkeypatch)
    assert reads == [1] * 5
    for get in (dd.Trace.loss, dd.Trace.grad_norms):
        np.testing.assert_allclose(get(there), get(here), rtol=1e-4)
    ratios = there.updates.array("update_ratio")
    np.testing.assert_allclose(ratios, here.updates.array("update_ratio"), rtol=1e-3)
    assert there.facts.class_counts == here.facts.class_counts


def test_the_checkup_reads_its_step_once_and_agrees_with_the_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, X, y = on(DEVICE)
    _, step = checkup_reads(monkeypatch, model, X, y)
    assert step == {"norms_and": 1}  # float64 gradient norms there: nothing to recount
    cpu_model, cpu_X, cpu_y = net()
    there, here = dd.checkup(model, (X, y)), dd.checkup(cpu_model, (cpu_X, cpu_y))
    for a, b in zip(there.layers, here.layers, strict=True):
        assert a.name == b.name
        assert a.grad_norm == pytest.approx(b.grad_norm, rel=1e-4)
        assert a.out_std == pytest.approx(b.out_std, rel=1e-4)
    assert there.loss["value"] == pytest.approx(here.loss["value"], rel=1e-5)
    assert [f.kind for f in there.findings] == [f.kind for f in here.findings]


def test_gradscaler_fp16_gradients_read_unscaled_and_skips_counted() -> None:
    model, X, y = on(DEVICE)
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler(DEVICE, init_scale=2.0**24)  # overflows fp16 at first
    stepped: list[list[float]] = []  # the gradients each step the optimizer took used
    opt.register_step_post_hook(
        lambda *a: stepped.append([float(model[i].weight.grad.norm()) for i in (0, 2)])
    )
    steps = 12
    with dd.Probe(model, scaler=scaler) as probe:
        for _ in range(steps):
            with torch.autocast(DEVICE, dtype=torch.float16):
                loss = nn.functional.cross_entropy(model(X), y)
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            probe.record_loss(loss)
    trace = probe.trace
    skipped = steps - len(stepped)
    assert skipped > 0 and trace.n_steps == len(stepped)
    assert trace.facts.skipped_steps == skipped
    np.testing.assert_allclose(trace.grad_norms(), stepped, rtol=1e-6)
    assert trace.grad_norms().max() < 100  # not multiplied by a scale in the millions

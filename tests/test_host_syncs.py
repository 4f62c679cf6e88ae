"""Host synchronisations (issue 15, item 7): the Probe reads tensors into Python once a step.

On a CPU there is no device to wait for, so what is counted is every call that brings a
tensor's values into Python (``tolist``, ``item``, ``float()`` ...): on an accelerator each
of them is a sync. One exception is deliberate and left as it is: the checkup's gradient
norms on a CPU (``stats._gradient_norm``) read one float32 scalar per parameter, to recompute
only tiny or non-finite ones in float64, since a CPU scalar costs no device sync; on an
accelerator that function reads nothing.
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn

import deepdoctor as dd

READS = ("tolist", "item", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy")


@contextmanager
def counted_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[collections.Counter[str]]:
    """Count the calls that read a tensor into Python, by the function that made them."""
    counts: collections.Counter[str] = collections.Counter()
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counting(self: torch.Tensor, *a: object, _f: object = original, **k: object) -> object:
            counts[sys._getframe(1).f_code.co_name] += 1
            return _f(self, *a, **k)  # type: ignore[operator]

        monkeypatch.setattr(torch.Tensor, name, counting)
    yield counts
    monkeypatch.undo()


def net() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    return model, torch.randn(32, 8), torch.randint(0, 3, (32,))


@pytest.mark.parametrize("closure", [False, True])
def test_the_probe_reads_once_a_step_sampled_or_not(
    monkeypatch: pytest.MonkeyPatch, closure: bool
) -> None:
    model, X, y = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # SGD itself reads nothing
    per_step, losses = [], []

    def loss_of() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(X), y)
        loss.backward()
        return loss

    with dd.Probe(model, optimizer=opt, every=3) as probe:
        for _ in range(7):
            with counted_reads(monkeypatch) as counts:
                if closure:
                    loss = opt.step(loss_of)
                else:
                    loss = loss_of()
                    opt.step()
                probe.record_loss(loss)
            per_step.append(sum(counts.values()))
            losses.append(loss.item())
    assert per_step == [1] * 7  # steps 0, 3, 6 sampled: activations and update ratios too
    trace = probe.trace  # the last step's loss and update norms are read here
    assert trace.loss().tolist() == losses
    assert trace.updates.step_array().tolist() == [0, 3, 6]


def test_the_values_read_together_are_the_values_read_apart() -> None:
    model, X, y = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with dd.Probe(model, optimizer=opt, every=2) as probe:
        for step in range(4):
            before = [p.detach().clone() for p in model[0].parameters()]
            loss = nn.functional.cross_entropy(model(X), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            probe.record_loss(loss)
            if step == 2:
                moved = sum(float(((p.detach() - b) ** 2).sum()) for p, b in zip(
                    model[0].parameters(), before, strict=True
                ))  # fmt: skip
                size = sum(float((b**2).sum()) for b in before)
    ratio = probe.trace.updates.array("update_ratio")[1, 0]  # step 2, the first layer
    assert ratio == pytest.approx((moved / size) ** 0.5, rel=1e-5)


def test_the_checkup_reads_its_step_once_besides_the_target_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, X, y = net()
    checkup = sys.modules["deepdoctor.checkup"]
    measure = checkup.measure_step0
    seen: collections.Counter[str] = collections.Counter()

    def counted(*a: object, **k: object) -> object:
        with counted_reads(monkeypatch) as counts:
            out = measure(*a, **k)
        seen.update(counts)
        return out

    monkeypatch.setattr(checkup, "measure_step0", counted)
    dd.checkup(model, (X, y))
    # per parameter on a CPU, by design (see the module docstring); never on an accelerator
    assert seen.pop("_gradient_norm") == 4
    # the class range check of the targets, the step's norms with its loss and logit
    # spread, and the target counts once the trace is read
    assert seen == {"fit_output": 1, "norms_and": 1, "facts": 1}

"""Host synchronisations (issue 15, item 7): the Probe and the checkup read tensors into
Python once a step.

On a CPU there is no device to wait for, so what is counted is every call that brings a
tensor's values into Python (``tolist``, ``item``, ``float()`` ...): on an accelerator each
of them is a sync. A second read is the documented exception: a norm that reads tiny or
non-finite in float32 is recounted in float64 (on the step it first does, for the Probe).
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


def checkup_reads(
    monkeypatch: pytest.MonkeyPatch,
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    **kwargs: object,
) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """The reads of one ``dd.checkup``: all of them, and those of its step (measure_step0)."""
    checkup = sys.modules["deepdoctor.checkup"]
    measure = checkup.measure_step0
    step: collections.Counter[str] = collections.Counter()
    dd.checkup(model, (X, y), **kwargs)  # the first call imports and plans: not what is counted
    with counted_reads(monkeypatch) as everything:

        def counted(*a: object, **k: object) -> object:
            before = collections.Counter(everything)
            out = measure(*a, **k)
            step.update(everything - before)
            return out

        monkeypatch.setattr(checkup, "measure_step0", counted)
        dd.checkup(model, (X, y), **kwargs)
    return everything, step


def test_the_checkup_reads_its_step_once(monkeypatch: pytest.MonkeyPatch) -> None:
    model, X, y = net()
    everything, step = checkup_reads(monkeypatch, model, X, y)
    # the norms with the loss, the logits' spread, the labels' range and the class counts
    assert step == {"norms_and": 1}
    # besides the step, the batch's check at the door (NaN or Inf in X), before any work
    assert everything == {"norms_and": 1, "as_tensors": 1}


def test_the_checkup_recounts_a_vanishing_gradient_in_a_second_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, X, y = net()

    def faint(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 1e-30 * nn.functional.cross_entropy(out, target)  # float32 squares: 0

    _, step = checkup_reads(monkeypatch, model, X, y, loss_fn=faint)
    assert step == {"norms_and": 1, "recount": 1}
    chk = dd.checkup(model, (X, y), loss_fn=faint)
    wide = model.double()  # against plain autograd in float64
    grads = torch.autograd.grad(faint(wide(X.double()), y), [wide[0].weight, wide[2].weight])
    model.float()
    got = [chk.layers[0].grad_norm, chk.layers[1].grad_norm]
    assert got == pytest.approx([float(g.norm()) for g in grads], rel=1e-5)
    assert all(0 < g < 1e-28 for g in got)


def test_a_wrong_label_is_named_from_the_steps_one_read(monkeypatch: pytest.MonkeyPatch) -> None:
    model, X, _ = net()
    y = torch.full((32,), -100)
    y[:5] = torch.tensor([0, 1, 2, 1, 4])  # class 4 of 3 outputs; -100 does not count
    wrong = "^the model has 3 outputs but the targets contain class 4: the last layer needs"
    with counted_reads(monkeypatch) as counts, pytest.raises(ValueError, match=wrong):
        dd.checkup(model, (X, y))
    assert counts["norms_and"] == 1 and "fit_output" not in counts

"""growth: grow an MLP during training by function-preserving steps (Net2Net).

Chen, Goodfellow & Shlens (2016) grow a trained network into a larger one that computes the
same function, so training continues from where it was instead of from scratch. Net2Wider
copies hidden units (a copy's incoming weights and bias equal its source's; the source's
outgoing weights are shared out among the copies); here the shares are random positive
fractions summing to one, which keeps the function exactly and still lets the copies'
gradients differ, so they do not stay identical. Net2Deeper inserts a layer initialised to
the identity after a ReLU layer: ReLU(I h) = h for h >= 0.

Schedule: a 1 x 32 net trains for a third of the steps, is widened to 1 x 128, trains a
third, is deepened to 2 x 128 and trains the last third. Against it: the 2 x 128 net trained
from scratch for all the steps. Training FLOPs are counted as 3 x the forward FLOPs of each
phase's net (``deepdoctor.complexity``; the backward pass costs about two forwards) x the
examples it saw.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import models
from ..complexity import measure
from ._base import Conclusion, Config, Lab, Row, Settings, final_metrics, fit, load_split, pct

START_WIDTH, FINAL_WIDTH = 32, 128
BATCH = 64
LR = 0.05
TRAIN_PASSES = 3  # forward + backward ~ 3 forwards (the backward computes two products)
PRESERVED = 1e-4  # largest output change a function-preserving step may make (float32)
SAME_ACCURACY = 0.01  # within one point of the from-scratch net: growth cost nothing


@dataclass(frozen=True)
class Budget:
    steps: int


FULL, QUICK = Budget(steps=1500), Budget(steps=300)


def _linears(model: nn.Sequential) -> list[nn.Linear]:
    return [m for m in model if isinstance(m, nn.Linear)]


def net2wider(model: nn.Sequential, layer: int, width: int, seed: int) -> nn.Sequential:
    """Widen hidden Linear ``layer`` (0-based) of an MLP to ``width`` units, same function."""
    g = torch.Generator().manual_seed(seed)
    linears = _linears(model)
    inner, outer = linears[layer], linears[layer + 1]
    old = inner.out_features
    source = torch.cat([torch.arange(old), torch.randint(0, old, (width - old,), generator=g)])
    share = torch.rand(width, generator=g) + 0.5
    totals = torch.zeros(old).index_add_(0, source, share)
    share = share / totals[source]  # the copies of each unit share its outgoing weights
    wide_in = nn.Linear(inner.in_features, width)
    wide_out = nn.Linear(width, outer.out_features)
    with torch.no_grad():
        wide_in.weight.copy_(inner.weight[source])
        wide_in.bias.copy_(inner.bias[source])
        wide_out.weight.copy_(outer.weight[:, source] * share)
        wide_out.bias.copy_(outer.bias)
    swap = {id(inner): wide_in, id(outer): wide_out}
    return nn.Sequential(OrderedDict((n, swap.get(id(m), m)) for n, m in model.named_children()))


def net2deeper(model: nn.Sequential) -> nn.Sequential:
    """Insert an identity Linear + ReLU after the last hidden ReLU: the same function."""
    children = list(model.named_children())
    last_act = max(i for i, (_, m) in enumerate(children) if isinstance(m, nn.ReLU))
    width = _linears(model)[-1].in_features
    identity = nn.Linear(width, width)
    with torch.no_grad():
        identity.weight.copy_(torch.eye(width))
        identity.bias.zero_()
    grown = [("grow_fc", identity), ("grow_act", nn.ReLU())]
    return nn.Sequential(OrderedDict(children[: last_act + 1] + grown + children[last_act + 1 :]))


def _change(before: nn.Module, after: nn.Module, X: torch.Tensor) -> float:
    with torch.no_grad():
        return float((before.eval()(X) - after.eval()(X)).abs().max())


def _flops(model: nn.Module, X: torch.Tensor, steps: int) -> float:
    return TRAIN_PASSES * measure(model, X[:2]).flops * BATCH * steps


def _train(model: nn.Module, split: Any, steps: int, seed: int) -> Any:
    return fit(
        model,
        split.train,
        split.val,
        steps=steps,
        batch_size=BATCH,
        seed=seed,
        optimizer=lambda p: torch.optim.SGD(p, lr=LR, momentum=0.9),
    )


def configs(settings: Settings) -> list[Config]:
    return [{"schedule": "grown"}, {"schedule": "scratch"}]


def run_one(config: Config, settings: Settings) -> Row:
    steps = (QUICK if settings.quick else FULL).steps
    split = load_split("digits")
    X = split.val[0]
    torch.manual_seed(settings.seed)
    if config["schedule"] == "scratch":
        model = models.mlp(64, 10, depth=2, width=FINAL_WIDTH)
        history = _train(model, split, steps, settings.seed)
        return {**final_metrics(history), "flops": _flops(model, X, steps), "max_change": 0.0}
    phase = steps // 3
    model = models.mlp(64, 10, depth=1, width=START_WIDTH)
    _train(model, split, phase, settings.seed)
    flops = _flops(model, X, phase)
    wider = net2wider(model, 0, FINAL_WIDTH, settings.seed)
    changes = [_change(model, wider, X)]
    _train(wider, split, phase, settings.seed + 1)
    flops += _flops(wider, X, phase)
    deeper = net2deeper(wider)
    changes.append(_change(wider, deeper, X))
    history = _train(deeper, split, steps - 2 * phase, settings.seed + 2)
    flops += _flops(deeper, X, steps - 2 * phase)
    assert [m.out_features for m in _linears(deeper)] == [FINAL_WIDTH, FINAL_WIDTH, 10]
    return {**final_metrics(history), "flops": flops, "max_change": max(changes)}


def conclude(rows: list[Row], settings: Settings) -> Conclusion:
    by = {r["schedule"]: r for r in rows}
    grown, scratch = by["grown"], by["scratch"]
    flop_ratio = grown["flops"] / scratch["flops"]
    lost = scratch["val_accuracy"] - grown["val_accuracy"]
    preserved = grown["max_change"] < PRESERVED
    if preserved and lost <= SAME_ACCURACY and flop_ratio < 1:
        verdict = "supported"
    elif preserved and flop_ratio < 1:
        verdict = "partly supported"
    else:
        verdict = "not reproduced"
    summary = (
        "Claim: a net grown by function-preserving steps trains to the accuracy of the same "
        "final net trained from scratch, for less compute. Each growth step changed the "
        f"outputs by at most {grown['max_change']:.2g} (function preserved: {preserved}). "
        f"Grown 1x{START_WIDTH} -> 1x{FINAL_WIDTH} -> 2x{FINAL_WIDTH}: "
        f"{pct(grown['val_accuracy'])} validation accuracy for {grown['flops']:.3g} training "
        f"FLOPs; from scratch: {pct(scratch['val_accuracy'])} for {scratch['flops']:.3g} "
        f"({flop_ratio:.0%} of the FLOPs, {100 * lost:+.1f} points against growth). "
        + (
            "Growth matched the final net for less compute."
            if verdict == "supported"
            else "Growth saved compute but gave up accuracy here."
            if verdict == "partly supported"
            else "Growth did not save compute, or did not preserve the function."
        )
    )
    table = [
        {
            "schedule": name,
            "val accuracy": pct(r["val_accuracy"]),
            "val loss": f"{r['val_loss']:.3f}",
            "training FLOPs": f"{r['flops']:.3g}",
            "of scratch's FLOPs": f"{r['flops'] / scratch['flops']:.0%}",
        }
        for name, r in (("grown (Net2Net)", grown), ("from scratch", scratch))
    ]
    published = [
        {
            "source": "Chen et al. 2016, Inception on ImageNet",
            "result": "Net2Wider reached the from-scratch accuracy faster than random padding; "
            "Net2Deeper matched a deeper net trained from scratch in less time",
        }
    ]
    numbers = {
        "flop_ratio": flop_ratio,
        "points_lost": 100 * lost,
        "max_change": grown["max_change"],
        "grown_accuracy": grown["val_accuracy"],
        "scratch_accuracy": scratch["val_accuracy"],
    }
    return Conclusion(verdict, summary, table, published=published, numbers=numbers)


LAB = Lab(
    name="growth",
    title="Progressive growth: Net2Net widen and deepen against training from scratch",
    source="Chen, Goodfellow & Shlens, Net2Net: Accelerating Learning via Knowledge "
    "Transfer, ICLR 2016",
    claim=(
        "Growing a network by function-preserving transformations during training reaches "
        "the accuracy of the final network trained from scratch, for less training compute."
    ),
    configs=configs,
    run_one=run_one,
    conclude=conclude,
    full_note=(
        f"Full: {FULL.steps} SGD steps on digits (the paper: Inception on ImageNet). Quick: "
        f"{QUICK.steps} steps."
    ),
)

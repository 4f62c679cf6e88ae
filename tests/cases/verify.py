"""Verify the suite's labels by a measurement that does not use deepdoctor's training loop or
detectors: plain PyTorch, a reviewer can rerun it.

``python -m tests.cases.verify [--seeds 0 1 2] [--pattern P]`` prints, per (case, seed), what
the measurement says of each label it can check, against the case's labels.

still_improving: train the case's setup for its steps and for twice as many, from the same
seed and data order, and compare the validation loss at the end. Present when twice the
training lowers it by ``PRESENT_GAIN`` or more, absent at ``ABSENT_GAIN`` or less, borderline
between (a label in the borderline band is not counted either way). A healthy case must
measure absent; a case labelled still_improving must measure present.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch
from torch import nn

from . import CASES, Case

PRESENT_GAIN = 0.2  # twice the training cuts the validation loss by a fifth or more
ABSENT_GAIN = 0.05  # ... by a twentieth or less: the run had converged


END_POINTS = 5  # the end of a run: the median validation loss at 5 points of its last 20%


def plain_run(case: Case, steps: int, seed: int) -> float:
    """The validation loss at the end of ``steps`` plain-loop steps of the case's setup: the
    median of ``END_POINTS`` evaluations spread over the last fifth of the run, so that one
    spike of an Adam run does not decide the label."""
    exp = case.build()
    torch.manual_seed(seed)
    model = exp.build()
    make_opt = exp.optimizer or (lambda p: torch.optim.SGD(p, lr=0.1))
    opt = make_opt([p for p in model.parameters() if p.requires_grad])
    X, y = exp.train
    Xv, yv = exp.val
    loss_fn = exp.loss_fn or (nn.CrossEntropyLoss() if not y.is_floating_point() else nn.MSELoss())
    order = torch.Generator().manual_seed(seed)
    size = min(exp.batch_size, len(X))
    done = 0
    checkpoints = {steps - round(i * steps / (5 * END_POINTS)) for i in range(END_POINTS)}
    ends: list[float] = []
    model.train()
    while done < steps:
        perm = torch.randperm(len(X), generator=order)
        for start in range(0, len(X) - size + 1, size):
            idx = perm[start : start + size]
            loss = loss_fn(_fit(model(X[idx]), y[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done in checkpoints:
                ends.append(_evaluate(model, loss_fn, Xv, yv))
            if done == steps:
                break
    return float(torch.tensor(ends).median())


def _evaluate(model: nn.Module, loss_fn: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        value = float(loss_fn(_fit(model(X), y), y))
    model.train()
    return value


def _fit(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One output per example for float targets of one value each."""
    if target.is_floating_point() and out.dim() == target.dim() + 1 and out.shape[-1] == 1:
        return out.squeeze(-1)
    return out


@dataclass(frozen=True)
class Verdict:
    case: str
    seed: int
    kind: str
    measured: str  # present | absent | borderline | unmeasurable
    value: float
    labelled: str  # expected | healthy | other

    @property
    def disagrees(self) -> bool:
        return (self.labelled == "expected" and self.measured == "absent") or (
            self.labelled == "healthy" and self.measured == "present"
        )


def still_improving(case: Case, seed: int) -> Verdict:
    steps = case.build().steps
    short, long = plain_run(case, steps, seed), plain_run(case, 2 * steps, seed)
    gain = (short - long) / short if short > 0 and math.isfinite(short) else math.nan
    measured = (
        "unmeasurable"
        if not math.isfinite(gain)
        else "present"
        if gain >= PRESENT_GAIN
        else "absent"
        if gain <= ABSENT_GAIN
        else "borderline"
    )
    labelled = (
        "expected" if "still_improving" in case.expected else "healthy" if case.healthy else "other"
    )
    return Verdict(case.name, seed, "still_improving", measured, gain, labelled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pattern", default="", help="only cases whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for case in CASES:
        if args.pattern not in case.name:
            continue
        if not (case.healthy or "still_improving" in case.expected):
            continue
        for seed in args.seeds:
            v = still_improving(case, seed)
            flag = "DISAGREES" if v.disagrees else "ok"
            print(
                f"{flag:9s} {v.case:45s} seed {seed}  {v.kind}: {v.measured:10s} "
                f"(2x steps: val loss {v.value:+.1%}; label: {v.labelled})",
                flush=True,
            )


if __name__ == "__main__":
    main()

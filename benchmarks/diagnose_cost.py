"""Where diagnose stops a run that blows up, against its full budget, and the compute saved.

``dd.diagnose`` stops a run early when the loss turns non-finite (the training loop) or
exceeds ``BLOWUP_FACTOR`` times its starting value (diagnose's own callback). The cases:
every preset whose name starts with ``diverging`` or ``nonfinite`` (among them
``diverging-relu-mlp20-digits``, a 20-layer ReLU MLP with He init and SGD at lr 0.3 and
momentum 0.9 on digits).

For each case this prints the step at which diagnose stopped (``Diagnosis.stopped_at``),
why (``stop_reason``), the budget (the experiment's ``steps``), and the compute saved two
ways: in steps, ``1 - steps run / budget``; and in time, against a *tame twin*, the same
experiment with its optimizer's lr set to 1e-4 (and a zero Adam eps to 1e-8), which runs the
whole budget with the same arithmetic per step. Diagnose and its twin are timed interleaved,
median of 3 (the machine is shared), so the time saving includes what diagnose costs
whether it stops or not: copying the model, the shape check, the final evaluation, the
detectors.

    .venv/bin/python benchmarks/diagnose_cost.py [--quick] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import deepdoctor as dd
from deepdoctor.presets import PRESETS, get_preset

TAME_LR = 1e-4
TAME_EPS = 1e-8


def cases() -> list[dd.Experiment]:
    names = sorted(n for n in PRESETS if n.startswith(("diverging", "nonfinite")))
    return [get_preset(n) for n in names]


def tame(factory: Callable[..., torch.optim.Optimizer]) -> Callable[..., torch.optim.Optimizer]:
    """The same optimizer at a learning rate (and Adam eps) that does not blow up."""

    def make(params: Any) -> torch.optim.Optimizer:
        opt = factory(params)
        for group in opt.param_groups:
            group["lr"] = TAME_LR
            if group.get("eps") == 0:
                group["eps"] = TAME_EPS
        return opt

    return make


def timed(exp: dd.Experiment) -> tuple[float, dd.Diagnosis]:
    start = time.perf_counter()
    diag = dd.diagnose_experiment(exp)
    return time.perf_counter() - start, diag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repetition")
    parser.add_argument("--repeats", type=int)
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    torch.set_num_threads(1)  # see checkup_speed.py: two threads spin on the shared cores
    print(
        f"dd.diagnose with its defaults; median of {repeats} interleaved runs of diagnose "
        f"and of its tame twin (lr {TAME_LR:g}, runs the full budget); 1 thread"
    )
    print(
        f"{'case':<28} {'budget':>6} {'stopped at':>10} {'reason':<15} {'saved (steps)':>13} "
        f"{'diagnose s':>10} {'twin s':>7} {'saved (time)':>12}  findings"
    )
    experiments = cases()
    timed(experiments[0].replace(steps=5))  # warm-up: lazy imports, first kernels
    for exp in experiments:
        twin = exp.replace(optimizer=tame(exp.optimizer))
        runs, twin_runs = [], []
        for _ in range(repeats):
            runs.append(timed(exp))
            twin_runs.append(timed(twin))
        diag = runs[-1][1]
        if twin_runs[-1][1].stop_reason != "completed":
            print(f"{exp.name}: the tame twin stopped too ({twin_runs[-1][1].stop_reason})")
        ran = diag.history.steps
        seconds = statistics.median(t for t, _ in runs)
        twin_seconds = statistics.median(t for t, _ in twin_runs)
        stopped = "-" if diag.stopped_at is None else str(diag.stopped_at)
        kinds = ", ".join(f.kind for f in diag.findings if f.is_problem) or "none"
        print(
            f"{exp.name:<28} {exp.steps:>6} {stopped:>10} {diag.stop_reason:<15} "
            f"{1 - ran / exp.steps:>13.0%} {seconds:>10.2f} {twin_seconds:>7.2f} "
            f"{1 - seconds / twin_seconds:>12.0%}  {kinds}",
            flush=True,
        )


if __name__ == "__main__":
    main()

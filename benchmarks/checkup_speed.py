"""How long a checkup takes against one training step, and how much memory, by depth.

For MLPs of width 256 at depths 10, 100 and 1,000 (He init, batch 64), this times one
training step (forward, backward, SGD step) and one ``dd.checkup`` of an identical copy of
the model on the same batch, interleaved, several times, and prints the median of each and
their ratio. The contract: at depth 1,000 a checkup takes at most 3x a training step.

Peak memory is measured in fresh child processes (one per depth and mode): the rise of the
process's peak resident set size during the operation, over what building the model and
the batch took (Linux: /proc/self/status).

Threads: torch runs with one thread here. On a shared 2-core machine the default OpenMP
pool of two threads spins against other processes and makes a matmul up to 50x slower and
wildly noisy; one thread gives stable timings for both sides of the ratio.

    .venv/bin/python benchmarks/checkup_speed.py [--quick] [--repeats 5] [--depths 10 100 1000]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import time

import torch
from _rss import CHILD_ENV, reset_peak, status_kib
from torch import nn

import deepdoctor as dd

WIDTH, BATCH, FEATURES, CLASSES = 256, 64, 256, 10


def setup(depth: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = dd.models.mlp(FEATURES, CLASSES, depth=depth, width=WIDTH, init="he")
    X = torch.randn(BATCH, FEATURES)
    y = torch.randint(0, CLASSES, (BATCH,))
    return model, X, y


def train_step(
    model: nn.Module, opt: torch.optim.Optimizer, X: torch.Tensor, y: torch.Tensor
) -> None:
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(X), y)
    loss.backward()
    opt.step()


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def speed(depth: int, repeats: int) -> tuple[float, float]:
    trained, X, y = setup(depth)
    checked = copy.deepcopy(trained)
    opt = torch.optim.SGD(trained.parameters(), lr=1e-3)
    train_step(trained, opt, X, y)  # warm-up: first calls allocate and initialise kernels
    dd.checkup(checked, (X, y))
    steps, checks = [], []
    for _ in range(repeats):
        steps.append(timed(lambda: train_step(trained, opt, X, y)))
        checks.append(timed(lambda: dd.checkup(checked, (X, y))))
    return statistics.median(steps), statistics.median(checks)


def run_op(mode: str, depth: int) -> None:
    model, X, y = setup(depth)
    if mode == "train":
        train_step(model, torch.optim.SGD(model.parameters(), lr=1e-3), X, y)
    else:
        dd.checkup(model, (X, y))


def child_memory(mode: str, depth: int) -> None:
    """In a fresh process: print the rise of peak RSS (KiB) during one step or checkup.

    Linux only: the peak is VmHWM of /proc/self/status, reset just before the operation by
    writing 5 to /proc/self/clear_refs (getrusage's ru_maxrss cannot be reset, and a child
    inherits its parent's).
    """
    torch.set_num_threads(1)
    run_op(mode, 1)  # loads the lazy imports and kernels of the mode first
    model, X, y = setup(depth)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    before = status_kib("VmRSS")
    reset_peak()
    if mode == "train":
        train_step(model, opt, X, y)
    else:
        dd.checkup(model, (X, y))
    print(status_kib("VmHWM") - before)


def peak_rise_kib(depth: int, mode: str) -> int:
    out = subprocess.run(
        [sys.executable, __file__, "--child-memory", mode, str(depth)],
        capture_output=True,
        text=True,
        check=True,
        env=CHILD_ENV,
    )
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="depths 10 and 100, 3 repeats")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--depths", type=int, nargs="+")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument(
        "--child-memory", nargs=2, metavar=("MODE", "DEPTH"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child_memory:
        child_memory(args.child_memory[0], int(args.child_memory[1]))
        return
    repeats = args.repeats or (3 if args.quick else 5)
    depths = args.depths or ([10, 100] if args.quick else [10, 100, 1000])
    torch.set_num_threads(1)
    print(
        f"MLP width {WIDTH}, batch {BATCH}, He init; median of {repeats} interleaved "
        "repetitions; 1 thread"
    )
    print(
        f"{'depth':>6} {'train step s':>13} {'checkup s':>10} {'ratio':>6}"
        + ("" if args.no_memory else f" {'step peak MiB':>14} {'checkup peak MiB':>17}")
    )
    for depth in depths:
        step, check = speed(depth, repeats)
        line = f"{depth:>6} {step:>13.4f} {check:>10.4f} {check / step:>6.2f}"
        if not args.no_memory:
            mem_step = peak_rise_kib(depth, "train") / 1024
            mem_check = peak_rise_kib(depth, "checkup") / 1024
            line += f" {mem_step:>14.1f} {mem_check:>17.1f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()

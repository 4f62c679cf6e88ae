"""Shared pieces of the overhead benchmarks: the three models, a training step, and paired
interleaved timing.

Threads: torch runs with one thread. On a shared 2-core machine the default pool of two
threads spins against other processes and makes the timings wildly noisy; one thread gives
stable timings for both sides of every ratio.

Timing: each configuration trains its own copy of the model (same weights, same batch).
One round runs a block of steps of every configuration in turn (plain first, then each
watched one), in a rotated order so no configuration always follows the same one; a
configuration's overhead in a round is its block time over the plain block's time of that
round, and the table reports the median over rounds. A block is a whole number of sampling
periods, so every block does the same share of sampled steps.
"""

from __future__ import annotations

import importlib.util
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

import deepdoctor as dd

CLASSES = 10
LR = 1e-3  # small enough that no model drifts far from where it started


@dataclass
class Bench:
    """One model to time: how to build it, a batch, and its description for the table."""

    name: str
    describe: str
    build: Callable[[], nn.Module]
    X: torch.Tensor
    y: torch.Tensor
    block: int = 16  # steps per timed block: one sampling period of the default Probe


def pin_threads(threads: int = 1) -> None:
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)


def benches() -> list[Bench]:
    """MLP 50 x 512, ResNet-style CNN of 20 conv layers on 32x32, transformer 6 x 256."""
    g = torch.Generator().manual_seed(0)

    def labels(n: int) -> torch.Tensor:
        return torch.randint(0, CLASSES, (n,), generator=g)

    def mlp() -> nn.Module:
        torch.manual_seed(0)
        return dd.models.mlp(512, CLASSES, depth=50, width=512, init="he")

    def cnn() -> nn.Module:
        # ResNet-20's shape: three stages (stride 2 at layers 7 and 14), batch norm,
        # identity shortcuts around every conv that keeps the shape.
        torch.manual_seed(0)
        return dd.models.cnn(
            (3, 32, 32),
            CLASSES,
            depth=20,
            width=32,
            norm="batch",
            residual=True,
            downsample_every=7,
            init="he",
        )

    def small() -> nn.Module:
        # small steps (~4 ms): the Probe's per-tensor and per-module costs show most here;
        # Xavier init keeps the first layers' gradients tiny (~1e-33) but not subnormal
        torch.manual_seed(0)
        return dd.models.mlp(64, CLASSES, depth=50, width=64, activation="sigmoid", init="xavier")

    def transformer() -> nn.Module:
        torch.manual_seed(0)
        return dd.models.transformer(128, CLASSES, depth=6, width=256, heads=4, in_features=16)

    return [
        Bench(
            "mlp",
            "MLP 50 x 512, ReLU, batch 128",
            mlp,
            torch.randn(128, 512, generator=g),
            labels(128),
        ),
        Bench(
            "cnn",
            "ResNet-style CNN, 20 conv x 32 ch, BN, 32x32x3, batch 32",
            cnn,
            torch.randn(32, 3, 32, 32, generator=g),
            labels(32),
        ),
        Bench(
            "small",
            "MLP 50 x 64, sigmoid, Xavier, batch 64",
            small,
            torch.randn(64, 64, generator=g),
            labels(64),
            block=128,  # 8 sampling periods: a block of 16 such steps is too short to time
        ),
        Bench(
            "transformer",
            "transformer encoder 6 x 256, 4 heads, seq 128, batch 8",
            transformer,
            torch.randn(8, 128, 16, generator=g),
            labels(8),
        ),
    ]


# A runner trains `n` steps of its own model and returns nothing; it is built once per
# configuration and model, so everything it sets up stays out of the timed blocks.
Runner = Callable[[int], None]


def sgd_loop(
    model: nn.Module,
    bench: Bench,
    after_step: Callable[[float], None] | None = None,
    lr: float = LR,
) -> Runner:
    """A user's own loop: forward, backward, SGD step, read the loss; then ``after_step``."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    X, y = bench.X, bench.y

    def run(n: int) -> None:
        for _ in range(n):
            loss = nn.functional.cross_entropy(model(X), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(loss.detach())  # every loop reads its loss (to print or log it)
            if after_step is not None:
                after_step(value)

    return run


def plain_runner(bench: Bench) -> Runner:
    return sgd_loop(bench.build(), bench)


def probe_runner(bench: Bench, every: int | None = None, package: Any = dd) -> Runner:
    """The plain loop inside one long-lived ``Probe`` (default settings unless ``every``) of
    ``package`` (deepdoctor, or an older copy from ``load_copy``)."""
    model = bench.build()
    probe = package.Probe(model) if every is None else package.Probe(model, every=every)
    probe.attach()
    return sgd_loop(model, bench, probe.record_loss)


def load_copy(src: str | Path, alias: str = "deepdoctor_before") -> ModuleType:
    """The deepdoctor package under ``src`` (a checkout's ``src`` directory, say of the
    commit before a change) imported as ``alias`` beside this one, so that both run in one
    process and one run times them side by side. Its modules import each other relatively,
    so the copy uses its own code throughout."""
    init = Path(src) / "deepdoctor" / "__init__.py"
    if not init.exists():
        raise SystemExit(
            f"no deepdoctor package at {init.parent}; give the src directory of a checkout"
        )
    spec = importlib.util.spec_from_file_location(
        alias, init, submodule_search_locations=[str(init.parent)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Timing:
    """Per-step seconds (CPU and wall) of every configuration, by round."""

    cpu: dict[str, dict[int, float]] = field(default_factory=dict)
    wall: dict[str, dict[int, float]] = field(default_factory=dict)

    def rounds_of(self, name: str) -> int:
        return len(self.cpu[name])

    @property
    def rounds(self) -> int:
        return max(len(v) for v in self.cpu.values())

    def median_step(self, name: str, clock: str = "cpu") -> float:
        return statistics.median(getattr(self, clock)[name].values())

    def ratio(self, name: str, base: str = "plain", clock: str = "cpu") -> float:
        """Median over the rounds both ran of this round's step time over the base's."""
        times = getattr(self, clock)
        return statistics.median(
            t / times[base][r] for r, t in times[name].items() if r in times[base]
        )


def _descendants(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            out += [kid, *_descendants(kid)]
    return out


def cpu_seconds() -> float:
    """CPU time of this process and of its live child processes (a peer may log from one).

    CPU time rather than wall time: on a shared machine another job's burst stretches a
    wall-clock block but leaves its CPU time nearly alone.
    """
    # process_time reads the kernel's nanosecond clock; os.times counts 10 ms ticks, which
    # made a block of 64 steps of 5 ms (0.3 s) a ratio of whole ticks, 3% apart
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for pid in _descendants(os.getpid()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def interleaved(
    runners: dict[str, Runner],
    block: int | dict[str, int],
    rounds: int,
    warmup: int = 1,
    budget: float = math.inf,
) -> Timing:
    """Time ``rounds`` rounds; a round runs a block of steps of every runner in turn.

    ``block`` is the steps per block, for all runners or per runner (a costly one can run
    fewer steps; times are per step). The order rotates from round to round. ``warmup``
    untimed rounds come first (first calls allocate memory and pick kernels). A runner
    whose timed blocks have taken ``budget`` wall seconds sits out the later rounds (its
    ratios pair with the rounds it ran).
    """
    names = list(runners)
    steps = block if isinstance(block, dict) else dict.fromkeys(names, block)
    for _ in range(warmup):
        for name in names:
            runners[name](steps[name])
    timing = Timing({n: {} for n in names}, {n: {} for n in names})
    spent = dict.fromkeys(names, 0.0)
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            if spent[name] >= budget:
                continue
            c0, t0 = cpu_seconds(), time.perf_counter()
            runners[name](steps[name])
            wall = time.perf_counter() - t0
            spent[name] += wall
            timing.wall[name][r] = wall / steps[name]
            timing.cpu[name][r] = (cpu_seconds() - c0) / steps[name]
    return timing


def per_step(
    runners: dict[str, Runner], period: int, periods: int, seed: int = 0, warmup: int = 1
) -> Timing:
    """Time the runners one step at a time: each step of a period runs one step of every
    runner, in an order shuffled step by step (seeded), and a runner's time for the period
    is the CPU time of its ``period`` steps (one sampling period: one sampled step each).
    Finer than ``interleaved``'s blocks: a burst of another job, or the cache left by the
    runner before, falls on every runner alike, so ratios of 1-2% separate."""
    rng = random.Random(seed)
    names = list(runners)
    for _ in range(warmup * period):
        for name in names:
            runners[name](1)
    timing = Timing({n: {} for n in names}, {n: {} for n in names})
    for r in range(periods):
        cpu = dict.fromkeys(names, 0.0)
        wall = dict.fromkeys(names, 0.0)
        for _ in range(period):
            rng.shuffle(names)
            for name in names:
                c0, t0 = time.process_time(), time.perf_counter()
                runners[name](1)
                cpu[name] += time.process_time() - c0
                wall[name] += time.perf_counter() - t0
        for name in names:
            timing.cpu[name][r] = cpu[name] / period
            timing.wall[name][r] = wall[name] / period
    return timing


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (it reads as well in a terminal as in docs/benchmarks.md)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)

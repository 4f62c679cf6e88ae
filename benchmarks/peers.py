"""deepdoctor's Probe beside the tools people use today, on the same models in the same run.

Peers: Cockpit (``cockpit-for-pytorch``, its economy configuration every step and every 16th
step, its full configuration every step; the model and the loss wrapped with BackPACK's
``extend`` as Cockpit requires) and ``wandb.watch(model, log="all")`` in offline mode (every
16th step, like the Probe's default, and every step). Every configuration trains its own
copy of each model of ``_timing.benches`` with plain SGD; blocks of steps are interleaved in
rounds and each ratio is the median over rounds of (block time / plain block time of the
same round), in CPU time of this process and its children (wandb writes from a child
process), wall-clock ratio in brackets. Torch runs with one thread (see ``_timing``).

A configuration that cannot run on a model says so in the table, with the error it raised.

The peers need their own environment (``make bench-peers`` builds ``.venv-bench``); the
main environment stays free of them:

    make bench-peers
    .venv-bench/bin/python benchmarks/peers.py [--rounds 5] [--models mlp cnn transformer]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _timing import (
    LR,
    Bench,
    Runner,
    benches,
    interleaved,
    pin_threads,
    plain_runner,
    probe_runner,
    sgd_loop,
    table,
)
from torch import nn

BENCH_PYTHON = Path(__file__).resolve().parent.parent / ".venv-bench" / "bin" / "python"
NO_EXTENSION = re.compile(r"does not have an extension for Module <class '([\w.]+)'>")


def cockpit_runner(bench: Bench, label: str, every: int, converter: bool = False) -> Runner:
    """The training loop of Cockpit's README, tracking ``label`` every ``every``-th step.

    ``converter``: let BackPACK rewrite the model with torch.fx first (its way to handle
    skip connections and functional calls)."""
    from backpack import extend
    from cockpit import Cockpit
    from cockpit.utils import schedules
    from cockpit.utils.configuration import configuration

    model = extend(bench.build(), use_converter=converter)
    loss_fn = extend(nn.CrossEntropyLoss())
    individual_loss_fn = nn.CrossEntropyLoss(reduction="none")
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    cockpit = Cockpit(
        model.parameters(),
        quantities=configuration(label, track_schedule=schedules.linear(every)),
    )
    X, y = bench.X, bench.y
    step = 0

    def run(n: int) -> None:
        nonlocal step
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            outputs = model(X)
            loss = loss_fn(outputs, y)
            losses = individual_loss_fn(outputs, y)
            info = {
                "batch_size": X.shape[0],
                "individual_losses": losses,
                "loss": loss,
                "optimizer": opt,
            }
            with cockpit(step, info=info):
                loss.backward(create_graph=cockpit.create_graph(step))
            opt.step()
            float(loss.detach())
            step += 1

    return run


_WANDB_RUN: Any = None


def wandb_runner(bench: Bench, log_freq: int) -> Runner:
    """``wandb.watch(model, log="all", log_freq=...)`` and ``wandb.log`` of the loss each
    step, in one offline run shared by every watched model."""
    global _WANDB_RUN
    import wandb

    if _WANDB_RUN is None:
        _WANDB_RUN = wandb.init(project="deepdoctor-bench", mode="offline")
    model = bench.build()
    _WANDB_RUN.watch(model, log="all", log_freq=log_freq)
    return sgd_loop(model, bench, lambda loss: _WANDB_RUN.log({"loss": loss}))


@dataclass
class Config:
    name: str
    make: Callable[[Bench], Runner]
    block: int  # steps per timed block: a whole number of sampling periods
    measures: str
    needs: tuple[str, ...] = ()  # the peer's modules


COCKPIT = ("backpack", "cockpit")
CONFIGS = [
    Config("plain", plain_runner, 16, "nothing (the baseline)"),
    Config(
        "deepdoctor Probe, default (every=16)",
        probe_runner,
        16,
        "every step: per-layer gradient and weight norms, loss; every 16th step also "
        "activation mean/std, dead and saturated fractions, layer output mean/std, input "
        "statistics, update-to-weight ratio",
    ),
    Config(
        "deepdoctor Probe, every=1",
        lambda b: probe_runner(b, every=1),
        4,
        "all of the above on every step",
    ),
    Config(
        "Cockpit economy, every step",
        lambda b, conv=False: cockpit_runner(b, "economy", 1, conv),
        4,
        "per-sample gradients (BackPACK) for gradient tests (norm, inner-product, "
        "orthogonality), 1D gradient histogram, gradient norm, update size, distance "
        "from init, alpha (step size quality from a quadratic fit), loss",
        COCKPIT,
    ),
    Config(
        "Cockpit economy, every 16th step",
        lambda b, conv=False: cockpit_runner(b, "economy", 16, conv),
        16,
        "the same, on every 16th step",
        COCKPIT,
    ),
    Config(
        "Cockpit full, every step",
        lambda b, conv=False: cockpit_runner(b, "full", 1, conv),
        1,
        "economy plus Hessian trace, TIC (diagonal), Hessian top eigenvalue (power "
        "iteration with Hessian-vector products), 2D gradient histogram",
        COCKPIT,
    ),
    Config(
        "wandb.watch log='all', log_freq=16",
        lambda b: wandb_runner(b, 16),
        16,
        "histograms (64 bins) of every parameter and every gradient every 16th step, "
        "logged loss each step",
        ("wandb",),
    ),
    Config(
        "wandb.watch log='all', log_freq=1",
        lambda b: wandb_runner(b, 1),
        4,
        "the same histograms on every step",
        ("wandb",),
    ),
]


def first_error_line(exc: BaseException) -> str:
    """The error that started it (a failure inside a backward hook can surface as another
    one raised while Cockpit cleans up), in one line, with where it was raised."""
    while exc.__context__ is not None:
        exc = exc.__context__
    message = str(exc).strip().splitlines()
    where = traceback.extract_tb(exc.__traceback__)[-1]
    text = f"{type(exc).__name__}: {message[0] if message else ''}"
    return f"{text[:240]} (at {os.path.basename(where.filename)}:{where.lineno})"


def start(config: Config, bench: Bench) -> Runner:
    """Build the configuration's runner for this model and run its first block (a tool that
    cannot handle the model fails here). Cockpit is tried as its README says, then with
    BackPACK's converter; when both fail, the error says why, with the modules BackPACK
    warned it has no extension for."""
    attempts = [config.make]
    if config.name.startswith("Cockpit"):
        attempts.append(lambda b: config.make(b, True))  # type: ignore[call-arg]
    errors = []
    unsupported: set[str] = set()
    for make in attempts:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                runner = make(bench)
                runner(config.block)
            except Exception as exc:  # noqa: BLE001
                errors.append(first_error_line(exc))
            else:
                return runner
        for w in caught:
            unsupported.update(NO_EXTENSION.findall(str(w.message)))
    message = errors[0]
    if len(errors) > 1:
        message += f"; with use_converter=True: {errors[1]}"
    if unsupported:
        names = ", ".join(sorted(n.rsplit(".", 1)[-1] for n in unsupported))
        message = f"BackPACK has no extension for {names}; {message}"
    raise RuntimeError(message)


def missing_peers() -> list[str]:
    needed = {m for c in CONFIGS for m in c.needs}
    return sorted(m for m in needed if importlib.util.find_spec(m) is None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per model")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 rounds, a 20 s budget, and without --models only the CNN and the "
        "transformer (Cockpit spends minutes a step on the MLP)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=120.0,
        help="wall seconds of timed blocks after which a configuration sits out the "
        "remaining rounds (Cockpit's full configuration takes minutes a step)",
    )
    parser.add_argument("--models", nargs="+", help="of mlp, cnn, transformer (default all)")
    args = parser.parse_args()
    missing = missing_peers()
    if missing and BENCH_PYTHON.exists() and Path(sys.executable) != BENCH_PYTHON:
        # Run from the main environment (make bench): the peers live in .venv-bench.
        os.execv(BENCH_PYTHON, [str(BENCH_PYTHON), __file__, *sys.argv[1:]])
    if missing:
        print(
            f"not installed here: {', '.join(missing)}; the peers run in .venv-bench, which "
            "`make bench-peers` builds. Measuring the Probe alone.",
            flush=True,
        )
    rounds = 2 if args.quick else args.rounds
    budget = 20.0 if args.quick else args.budget
    models = args.models or (
        ["cnn", "transformer"] if args.quick else ["mlp", "cnn", "transformer"]
    )
    pin_threads()
    warnings.simplefilter("ignore")  # BackPACK's and Cockpit's, every step; start() keeps its own
    tmp = tempfile.TemporaryDirectory(prefix="deepdoctor-bench-wandb-")
    # Offline: wandb writes its run into a temporary folder and never opens a connection.
    os.environ.update(
        WANDB_MODE="offline",
        WANDB_DIR=tmp.name,
        WANDB_SILENT="true",
        WANDB_CONSOLE="off",
        WANDB_DISABLE_GIT="true",
        WANDB_DISABLE_CODE="true",
    )
    results: dict[str, dict[str, str]] = {c.name: {} for c in CONFIGS}
    notes: list[str] = []
    selected = [b for b in benches() if b.name in models]
    for bench in selected:
        runners: dict[str, Runner] = {}
        for config in CONFIGS:
            if set(config.needs) & set(missing):
                results[config.name][bench.name] = "not installed"
                continue
            try:
                runners[config.name] = start(config, bench)
            except Exception as exc:  # noqa: BLE001 - the table reports what it raised
                notes.append(f"{config.name} on the {bench.name}: {exc}")
                results[config.name][bench.name] = f"cannot run [{len(notes)}]"
        blocks = {c.name: c.block for c in CONFIGS if c.name in runners}
        t = interleaved(runners, blocks, rounds, warmup=0, budget=budget)
        for name in runners:
            if name == "plain":
                results[name][bench.name] = f"{1000 * t.median_step(name):.0f} ms/step (CPU)"
            else:
                n = t.rounds_of(name)
                few = f", {n} round{'s' if n > 1 else ''}" if n < t.rounds else ""
                results[name][bench.name] = (
                    f"{t.ratio(name):.2f} ({t.ratio(name, clock='wall'):.2f}){few}"
                )
        print(f"{bench.name}: done ({t.rounds} rounds)", flush=True)
    if _WANDB_RUN is not None:
        _WANDB_RUN.finish()
    print()
    print(
        table(
            ["configuration", *(b.describe for b in selected), "what it measures"],
            [
                [c.name, *(results[c.name].get(b.name, "") for b in selected), c.measures]
                for c in CONFIGS
            ],
        )
    )
    for i, note in enumerate(notes, 1):
        print(f"\n[{i}] {note}")
    tmp.cleanup()


if __name__ == "__main__":
    main()

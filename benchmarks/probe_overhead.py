"""Probe overhead: step time with ``dd.Probe`` over step time without it, side by side.

Four models (see ``_timing.benches``): an MLP of 50 layers of width 512, a ResNet-style CNN
of 20 conv layers on 32x32 inputs, a transformer encoder of 6 layers of width 256 on
sequences of 128, and a small-step MLP of 50 sigmoid layers of width 64 (blocks of 128
steps). Each trains with plain SGD in a user's own loop: without the Probe, with
``dd.Probe(model)`` at its default settings (norms every step, activation statistics every
16th step), and with ``dd.Probe(model, every=1)`` (full statistics every step). Runs are
interleaved in rounds of 16 steps each (one sampling period); the ratio is the median over
rounds of (watched block time / plain block time of the same round), in CPU time (this
process and its children), with the wall-clock ratio in brackets. A second plain copy timed
the same way gives the noise: its ratio would be 1.000 on a quiet machine. Torch runs with one
thread (see ``_timing``) unless ``--threads`` says otherwise (0: torch's default count).
Target: at most 1.05 at default settings; at most 1.15 for the small-step MLP.
``--before SRC`` also times the Probe of another checkout (its ``src`` directory, loaded
beside this one in the same process: ``_timing.load_copy``) in the same rounds, so a change
is measured side by side with the code before it. ``--per-step N`` times one step at a
time instead, every configuration's steps shuffled together, over N sampling periods (the
ratio: the median over periods), which separates changes of 1-2% that the rounds do not.

    .venv/bin/python benchmarks/probe_overhead.py [--rounds 7] [--threads 1]
        [--models mlp cnn transformer small] [--before /path/to/checkout/src]
        [--per-step PERIODS]
"""

from __future__ import annotations

import argparse

import torch
from _timing import (
    benches,
    interleaved,
    load_copy,
    per_step,
    pin_threads,
    plain_runner,
    probe_runner,
    table,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per model")
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument(
        "--models", nargs="+", default=["mlp", "cnn", "transformer", "small"], help="of _timing"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (0: torch's default count)"
    )
    parser.add_argument(
        "--before", metavar="SRC", help="also time the Probe of the deepdoctor under SRC"
    )
    parser.add_argument(
        "--per-step",
        type=int,
        metavar="PERIODS",
        help="time one step at a time in shuffled order over PERIODS sampling periods "
        "(_timing.per_step) instead of blocks in rounds",
    )
    args = parser.parse_args()
    before = load_copy(args.before) if args.before else None
    rounds = 3 if args.quick else args.rounds
    if args.threads:
        pin_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    rows = []
    for bench in benches():
        if bench.name not in args.models:
            continue
        runners = {
            "plain": plain_runner(bench),
            "plain again": plain_runner(bench),  # a ratio that should be 1: the noise
            "default": probe_runner(bench),
            "every=1": probe_runner(bench, every=1),
        }
        if before is not None:
            runners["default, before"] = probe_runner(bench, package=before)
            runners["every=1, before"] = probe_runner(bench, every=1, package=before)
        watched = [n for n in runners if n not in ("plain", "plain again")]
        if args.per_step:
            t = per_step(runners, bench.block, args.per_step)
        else:
            t = interleaved(runners, bench.block, rounds)
        rows.append(
            [
                bench.describe,
                f"{1000 * t.median_step('plain'):.0f}",
                *(
                    f"{t.ratio(n):.3f} ({t.ratio(n, clock='wall'):.3f})"
                    for n in (*watched, "plain again")
                ),
                str(t.rounds),
            ]
        )
        print(f"{bench.name}: done", flush=True)
    print()
    print(
        table(
            [
                "model",
                "plain step, CPU ms",
                "Probe default (every=16): CPU (wall)",
                "Probe every=1: CPU (wall)",
                *(
                    ["default, before: CPU (wall)", "every=1, before: CPU (wall)"]
                    if before is not None
                    else []
                ),
                "plain / plain (noise): CPU (wall)",
                "rounds",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()

"""The largest transformer encoder that ``dd.diagnose`` handles here in 10 minutes, and the
Probe's memory overhead on it.

The task: MNIST-1D read as a sequence (40 positions, one feature each, 10 classes), 256
training samples, 128 validation samples, mini-batches of 16, Adam at lr 3e-4, 40 steps.
``dd.diagnose`` runs with its defaults (a deep copy of the model, the Probe recording
activations every ``steps // 20`` = 2nd step) except ``eval_every=40``: one evaluation at
the end. Its default of ten evaluations, each a forward pass over the 384 evaluation
samples, would cost more than the 40 training steps on these sizes.

Sizes grow by depth and width together (head size 64, feed-forward 2x width, pre-LN), each
about 1.5 to 2 times the parameters of the one before. For each size, in fresh child
processes (torch on one thread, see below):

1. ``plain``: ``dd.train`` for 3 steps with one final evaluation, and ``probe``: the same
   under ``dd.Probe(model, every=2)``. They give the time per step and the peak resident
   memory with and without the Probe (same steps; 3 are enough to reach the peak: Adam's
   moments exist from the first step, the Probe's copy of the weights on steps 0 and 2).
2. From the probe run, the estimated time of the whole diagnose: its 3 steps and evaluation
   plus 37 more steps at its median step time. The search stops at the first size whose
   estimate passes the limit, or whose predicted memory passes 22 GiB; a size predicted
   (from the last one, by parameters) to take over three times the limit is not even
   measured.
3. The largest size within the limit is then diagnosed for real, 40 steps, timed, with its
   peak memory.

Time is CPU time of the process, with torch on one thread: what the run takes on a core of
its own. This machine's 2 cores are shared with other work, so wall time runs 1 to 3 times
longer and changes from run to run; it is printed beside. Two torch threads were slower
than one here (a step of the 67M model: 9-21 s against 5-7 s), as the pool spins against
the other processes.

    .venv/bin/python benchmarks/largest_model.py [--quick] [--limit 600]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import torch
from _rss import CHILD_ENV, reset_peak, status_kib

import deepdoctor as dd
from deepdoctor.diagnose import EVERY_TARGET_SAMPLES, MAX_EVERY

# (depth, width): about 1, 8, 28, 67, 106, 157, 222, 302, 514 and 806 million parameters.
SIZES = [
    (2, 256),
    (4, 512),
    (6, 768),
    (8, 1024),
    (10, 1152),
    (12, 1280),
    (14, 1408),
    (16, 1536),
    (20, 1792),
    (24, 2048),
]
HEAD_SIZE = 64
STEPS = 40
MEASURE_STEPS = 3  # step 0 warms up (allocations, Adam's moments); steps 1 and 2 are timed
BATCH = 16
TRAIN_SAMPLES, VAL_SAMPLES = 256, 128
LR = 3e-4
LIMIT_S = 600.0
MEMORY_BUDGET_KIB = 22 * 1024 * 1024  # of 24 GiB: the rest for the system and other work
SKIP_FACTOR = 3.0  # a size predicted at 3x the limit would cost minutes just to measure


def every_for(steps: int) -> int:
    """The activation-sampling interval dd.diagnose picks for a run of ``steps`` steps."""
    return max(1, min(MAX_EVERY, steps // EVERY_TARGET_SAMPLES))


def load_data() -> tuple[Any, Any, int]:
    split = dd.data.load("mnist1d", subset=TRAIN_SAMPLES)
    val = (split.X_val[:VAL_SAMPLES], split.y_val[:VAL_SAMPLES])
    return (split.X_train, split.y_train), val, split.n_classes


def build(depth: int, width: int, n_classes: int = 10) -> torch.nn.Module:
    return dd.models.transformer(40, n_classes, depth=depth, width=width, heads=width // HEAD_SIZE)


def count_params(depth: int, width: int) -> int:
    with torch.device("meta"):  # no memory, no arithmetic
        return sum(p.numel() for p in build(depth, width).parameters())


def adam(params: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=LR)


def clocks() -> tuple[float, float]:
    """Wall-clock and CPU seconds of this process."""
    return time.perf_counter(), time.process_time()


class StepClock:
    """A training-loop callback that notes the clocks at the start and at each step's end,
    and the peak memory up to the last step's end (the final evaluation comes after)."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []
        self.peak_kib = 0

    def on_train_start(self, state: Any) -> None:
        self.marks.append(clocks())

    def on_step_end(self, state: Any) -> None:
        self.marks.append(clocks())
        self.peak_kib = status_kib("VmHWM")

    def median_step(self, clock: int) -> float:
        """Median seconds per step after the first (which allocates), by clock 0 or 1."""
        steps = [b[clock] - a[clock] for a, b in zip(self.marks, self.marks[1:], strict=False)]
        return statistics.median(steps[1:] or steps)


def child(mode: str, depth: int, width: int, steps: int) -> None:
    """In a fresh process: train or diagnose one size; print one JSON line of measurements."""
    torch.set_num_threads(1)
    train, val, n_classes = load_data()
    torch.manual_seed(0)
    model = build(depth, width, n_classes)
    out: dict[str, Any] = {"mode": mode, "steps": steps}
    out["base_kib"] = status_kib("VmRSS")
    reset_peak()
    start = clocks()
    if mode == "diagnose":
        diag = dd.diagnose(
            model, train, val, optimizer=adam, steps=steps, batch_size=BATCH, eval_every=steps
        )
        out["stop"] = diag.stop_reason
        out["findings"] = [f"{f.kind} ({f.severity})" for f in diag.findings]
    else:
        clock = StepClock()
        probe = dd.Probe(model, every=every_for(STEPS)) if mode == "probe" else None
        with probe if probe is not None else contextlib.nullcontext():
            dd.train(
                model,
                train,
                val,
                optimizer=adam,
                steps=steps,
                batch_size=BATCH,
                eval_every=steps,
                probe=probe,
                callbacks=[clock],
            )
        out["step_s"] = clock.median_step(0)
        out["step_cpu_s"] = clock.median_step(1)
        out["steps_peak_kib"] = clock.peak_kib
    end = clocks()
    out["total_s"] = end[0] - start[0]
    out["total_cpu_s"] = end[1] - start[1]
    out["peak_kib"] = status_kib("VmHWM")
    print(json.dumps(out))


def run_child(mode: str, depth: int, width: int, steps: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(depth), str(width), str(steps)],
        capture_output=True,
        text=True,
        env=CHILD_ENV,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"mode": mode, "error": f"exit {proc.returncode}: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gib(kib: float) -> float:
    return kib / 1024 / 1024


def estimate(run: dict[str, Any], clock: str) -> float:
    """Seconds for the full run: the measured short run plus the remaining steps."""
    step = run["step_cpu_s" if clock == "cpu" else "step_s"]
    total = run["total_cpu_s" if clock == "cpu" else "total_s"]
    return total + (STEPS - MEASURE_STEPS) * step


def search(sizes: list[tuple[int, int]], limit: float) -> list[dict[str, Any]]:
    """Measure sizes in increasing order until one would not fit; return the measured rows."""
    print(
        f"{'depth':>5} {'width':>5} {'params M':>9} {'step CPU s':>10} {'Probe step CPU s':>16} "
        f"{'est. CPU s':>10} {'est. wall s':>11} {'peak GiB':>8} {'Probe peak GiB':>14} "
        f"{'Probe +MiB':>10} {'in steps +MiB':>13}"
    )
    rows: list[dict[str, Any]] = []
    for depth, width in sizes:
        params = count_params(depth, width)
        row: dict[str, Any] = {"depth": depth, "width": width, "params": params}
        if rows:
            last = rows[-1]
            scale = params / last["params"]
            predicted_s = last["estimate_cpu_s"] * scale
            predicted_kib = last["base_kib"] + last["probe_rise_kib"] * scale
            if predicted_s > SKIP_FACTOR * limit or predicted_kib > MEMORY_BUDGET_KIB:
                print(
                    f"{depth:>5} {width:>5} {params / 1e6:>9.0f}  not measured: predicted "
                    f"{predicted_s:.0f} CPU s and {gib(predicted_kib):.1f} GiB from the size "
                    "before (time and memory scale with the parameters)"
                )
                break
        plain = run_child("plain", depth, width, MEASURE_STEPS)
        probe = run_child("probe", depth, width, MEASURE_STEPS)
        failed = [r["error"] for r in (plain, probe) if "error" in r]
        if failed:
            print(f"{depth:>5} {width:>5} {params / 1e6:>9.0f}  failed: {failed[0]}")
            break
        row.update(
            step_cpu_s=plain["step_cpu_s"],
            probe_step_cpu_s=probe["step_cpu_s"],
            estimate_cpu_s=estimate(probe, "cpu"),
            estimate_s=estimate(probe, "wall"),
            base_kib=probe["base_kib"],
            plain_peak_kib=plain["peak_kib"],
            probe_peak_kib=probe["peak_kib"],
            steps_extra_kib=probe["steps_peak_kib"] - plain["steps_peak_kib"],
            probe_rise_kib=probe["peak_kib"] - probe["base_kib"],
        )
        row["fits"] = row["estimate_cpu_s"] <= limit and row["probe_peak_kib"] <= MEMORY_BUDGET_KIB
        print(
            f"{depth:>5} {width:>5} {params / 1e6:>9.1f} {row['step_cpu_s']:>10.2f} "
            f"{row['probe_step_cpu_s']:>16.2f} {row['estimate_cpu_s']:>10.0f} "
            f"{row['estimate_s']:>11.0f} {gib(row['plain_peak_kib']):>8.2f} "
            f"{gib(row['probe_peak_kib']):>14.2f} "
            f"{(row['probe_peak_kib'] - row['plain_peak_kib']) / 1024:>10.0f} "
            f"{row['steps_extra_kib'] / 1024:>13.0f}",
            flush=True,
        )
        rows.append(row)
        if not row["fits"]:
            break
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the three smallest sizes, 60 s")
    parser.add_argument("--limit", type=float, help=f"seconds (default {LIMIT_S:.0f})")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, depth, width, steps = args.child
        child(mode, int(depth), int(width), int(steps))
        return
    sizes = SIZES[:3] if args.quick else SIZES
    limit = args.limit or (60.0 if args.quick else LIMIT_S)
    started = time.perf_counter()
    print(
        f"dd.diagnose of a transformer encoder on MNIST-1D as a sequence (40 x 1), batch "
        f"{BATCH}, Adam lr {LR}, {STEPS} steps, one evaluation; 1 torch thread; limit "
        f"{limit:.0f} s; peak = peak resident set of the whole process (VmHWM)"
    )
    print(f"search: {MEASURE_STEPS} steps per size with and without the Probe (every=2)")
    rows = search(sizes, limit)
    fitting = [r for r in rows if r["fits"]]
    if not fitting:
        print("no size fits the limit")
        return
    best = fitting[-1]
    print(
        f"\ndiagnose of the largest size that fits: depth {best['depth']}, width "
        f"{best['width']}, {best['params'] / 1e6:.1f}M parameters ({STEPS} steps)",
        flush=True,
    )
    diag = run_child("diagnose", best["depth"], best["width"], STEPS)
    if "error" in diag:
        print(f"  failed: {diag['error']}")
        return
    verdict = "within" if diag["total_cpu_s"] <= limit else "OVER"
    print(
        f"  CPU time {diag['total_cpu_s']:.0f} s ({verdict} the {limit:.0f} s limit; estimated "
        f"{best['estimate_cpu_s']:.0f} s); wall time {diag['total_s']:.0f} s (estimated "
        f"{best['estimate_s']:.0f} s)"
    )
    print(
        f"  peak RSS {gib(diag['peak_kib']):.2f} GiB (model and data built: "
        f"{gib(diag['base_kib']):.2f} GiB; training alone, 3 steps: "
        f"{gib(best['plain_peak_kib']):.2f} GiB; with the Probe: "
        f"{gib(best['probe_peak_kib']):.2f} GiB)"
    )
    print(f"  stopped: {diag['stop']}; findings: {', '.join(diag['findings']) or 'none'}")
    overhead = best["probe_peak_kib"] - best["plain_peak_kib"]
    weights_mib = best["params"] * 4 / 2**20
    print(
        f"  Probe's memory overhead (3 steps, same seed): {overhead / 1024:+.0f} MiB, "
        f"x{best['probe_peak_kib'] / best['plain_peak_kib']:.2f} of the peak; "
        f"{best['steps_extra_kib'] / 1024:+.0f} MiB on the peak of the training steps alone "
        f"(before the final evaluation); the weights are {weights_mib:.0f} MiB"
    )
    print(f"total time of this benchmark: {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()

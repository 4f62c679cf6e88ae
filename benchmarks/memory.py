"""Resident memory over a long run (10,000 steps by default, up to 10^6) with and without
the Probe, and what the Trace costs per step and per layer.

The claim under test: memory stays flat however long the run. The Probe keeps only
scalars, and the Trace keeps its newest rows exact and summarises older ones in a bounded
number of blocks (``deepdoctor.trace.Table``), so after the first few thousand steps it
stops growing. ``--tiny`` trains a 3-layer MLP of width 16 on batches of 16 instead (cheap
enough for 10^6 steps); ``--no-plain`` skips the run without the Probe.

The model: a ReLU MLP of depth 10 and width 128 with He init on digits (11 Linear layers,
10 ReLU modules), SGD at lr 0.01 with momentum 0.9, mini-batches of 64, in the user's own
loop as the Probe's docstring shows it (``dd.Probe(model)`` at its defaults,
``probe.record_loss(loss)`` each step). The same loop runs without the Probe in another
fresh child process, same seed. Every 1,000 steps each child reads its resident set
(VmRSS, /proc/self/status); at the end its peak (VmHWM) and, with the Probe, the size of
the Trace in memory: ``sys.getsizeof`` over the Trace's lists, dicts, ints and floats,
each object counted once (measured only after the last sample, since walking half a
million objects itself takes memory).

    .venv/bin/python benchmarks/memory.py [--quick] [--steps 10000] [--every 1000]
    .venv/bin/python benchmarks/memory.py --tiny --steps 100000 --after 10000
    .venv/bin/python benchmarks/memory.py --tiny --steps 1000000 --after 10000 --no-plain
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _rss import CHILD_ENV, status_kib
from torch import nn

import deepdoctor as dd
from deepdoctor.training import batches

DEPTH, WIDTH, BATCH, LR = 10, 128, 64, 0.01
TINY_DEPTH, TINY_WIDTH, TINY_BATCH = 2, 16, 16  # 3 Linear layers


def deep_size(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes held by ``obj`` and everything it refers to, each object counted once."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, list | tuple | set):
        size += sum(deep_size(v, seen) for v in obj)
    elif hasattr(obj, "__dict__"):
        size += deep_size(vars(obj), seen)
    return size


def child(with_probe: bool, steps: int, every: int, tiny: bool) -> None:
    """In a fresh process: train, print one JSON line per sample and one at the end."""
    torch.set_num_threads(1)
    split = dd.data.load("digits")
    torch.manual_seed(0)
    depth, width, batch = (TINY_DEPTH, TINY_WIDTH, TINY_BATCH) if tiny else (DEPTH, WIDTH, BATCH)
    model = dd.models.mlp(64, 10, depth=depth, width=width, init="he")
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    stream = batches((split.X_train, split.y_train), batch, seed=0)
    probe = dd.Probe(model) if with_probe else None
    if probe is not None:
        probe.attach()
    start = time.perf_counter()
    for step in range(1, steps + 1):
        xb, yb = next(stream)
        loss = nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if probe is not None:
            probe.record_loss(loss)
        if step % every == 0:
            print(json.dumps({"step": step, "rss_kib": status_kib("VmRSS")}), flush=True)
    end: dict[str, Any] = {"wall_s": time.perf_counter() - start, "peak_kib": status_kib("VmHWM")}
    if probe is not None:
        probe.detach()
        trace = probe.trace
        end["layers"] = len(trace.layers)
        end["rows"] = len(trace.layer)
        end["summarised"] = getattr(trace, "summarised", False)  # older Traces: never
        end["act_layers"] = len(trace.act_layers)
        end["trace_bytes"] = deep_size(trace)
        tables = trace.tables()
        end["table_bytes"] = {name: deep_size(t) for name, t in tables.items()}
        end["values"] = sum(len(t) * len(t.names) * len(t.stats) for t in tables.values())
        with tempfile.TemporaryDirectory() as tmp:
            end["npz_bytes"] = trace.save(Path(tmp) / "trace.npz").stat().st_size
    print(json.dumps(end), flush=True)


def run_child(
    with_probe: bool, steps: int, every: int, tiny: bool
) -> tuple[list[dict[str, Any]], dict]:
    args = [sys.executable, __file__, "--child", "probe" if with_probe else "plain"]
    args += ["--steps", str(steps), "--every", str(every)] + (["--tiny"] if tiny else [])
    out = subprocess.run(args, capture_output=True, text=True, check=True, env=CHILD_ENV)
    lines = [json.loads(line) for line in out.stdout.strip().splitlines()]
    return lines[:-1], lines[-1]


def slope_kib_per_1000(samples: list[dict[str, Any]], skip: int) -> float:
    """Least-squares slope of the resident set over the samples after ``skip`` steps."""
    points = [(s["step"], s["rss_kib"]) for s in samples if s["step"] > skip] or [
        (s["step"], s["rss_kib"]) for s in samples
    ]
    if len(points) < 2:
        return float("nan")
    x, y = np.array(points, dtype=float).T
    return float(np.polyfit(x, y, 1)[0] * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 steps, sampled every 200")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--every", type=int, help="read the resident set every N steps")
    parser.add_argument("--after", type=int, help="slope and growth after this step")
    parser.add_argument("--tiny", action="store_true", help="a 3-layer MLP of width 16")
    parser.add_argument("--no-plain", action="store_true", help="only the run with the Probe")
    parser.add_argument("--child", choices=["plain", "probe"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = args.steps or (2000 if args.quick else 10_000)
    every = args.every or max(1, steps // 10)
    if args.child:
        child(args.child == "probe", steps, every, args.tiny)
        return

    probed, probe_end = run_child(True, steps, every, args.tiny)
    plain, plain_end = (
        ([{**s, "rss_kib": math.nan} for s in probed], {"peak_kib": math.nan, "wall_s": math.nan})
        if args.no_plain
        else run_child(False, steps, every, args.tiny)
    )
    depth, width, batch = (
        (TINY_DEPTH, TINY_WIDTH, TINY_BATCH) if args.tiny else (DEPTH, WIDTH, BATCH)
    )
    print(
        f"MLP depth {depth}, width {width} ({depth + 1} Linear layers), batch {batch}, SGD, "
        f"digits; {steps:,} steps; dd.Probe at its defaults (every=16); 1 thread; fresh "
        "process each"
    )
    print(f"{'step':>7} {'RSS MiB plain':>14} {'RSS MiB Probe':>14} {'Probe - plain':>14}")
    for a, b in zip(plain, probed, strict=True):
        diff = (b["rss_kib"] - a["rss_kib"]) / 1024
        print(
            f"{a['step']:>7} {a['rss_kib'] / 1024:>14.1f} {b['rss_kib'] / 1024:>14.1f} "
            f"{diff:>14.1f}"
        )
    skip = args.after or every  # the first interval holds the allocator's warm-up
    s_plain = slope_kib_per_1000(plain, skip)
    s_probe = slope_kib_per_1000(probed, skip)
    start = next(s for s in probed if s["step"] >= skip)["step"]  # the first sample from skip
    grown = {
        name: (rows[-1]["rss_kib"] - next(s["rss_kib"] for s in rows if s["step"] == start)) / 1024
        for name, rows in (("plain", plain), ("Probe", probed))
    }
    layers = probe_end["layers"]
    trace_bytes = probe_end["trace_bytes"]
    print(
        f"peak RSS: plain {plain_end['peak_kib'] / 1024:.1f} MiB, with the Probe "
        f"{probe_end['peak_kib'] / 1024:.1f} MiB "
        f"(wall time {plain_end['wall_s']:.0f} s and {probe_end['wall_s']:.0f} s, one run each)"
    )
    print(
        f"RSS slope after step {skip:,}: plain {s_plain:+.1f} KiB per 1,000 steps, with the "
        f"Probe {s_probe:+.1f} KiB per 1,000 steps"
    )
    print(
        f"RSS growth from step {start:,} to {steps:,}: plain {grown['plain']:+.2f} MiB, with the "
        f"Probe {grown['Probe']:+.2f} MiB; the Trace's layer table holds {probe_end['rows']:,} "
        f"rows{' (older steps summarised)' if probe_end['summarised'] else ''}"
    )
    print(
        f"Trace in memory after {steps:,} steps: {trace_bytes / 2**20:.2f} MiB = "
        f"{trace_bytes / steps:.0f} bytes per step = "
        f"{trace_bytes / steps / layers:.0f} bytes per step per layer ({layers} layers, "
        f"{probe_end['act_layers']} activation modules); "
        f"{trace_bytes / probe_end['values']:.1f} bytes per stored scalar"
    )
    per_table = ", ".join(
        f"{name} {size / steps:.0f}" for name, size in probe_end["table_bytes"].items()
    )
    print(f"  bytes per step by table: {per_table}")
    print(
        f"  the Probe's extra RSS slope ({s_probe - s_plain:+.0f} KiB per 1,000 steps) against "
        f"the Trace's own growth ({trace_bytes / steps * 1000 / 1024:.0f} KiB per 1,000 steps); "
        "the rest is free space the allocator keeps between the Trace's small objects"
    )
    print(
        f"  saved as .npz (float64, compressed): {probe_end['npz_bytes'] / 2**20:.2f} MiB; "
        f"as float64 arrays in memory it would be {8 * probe_end['values'] / 2**20:.2f} MiB"
    )


if __name__ == "__main__":
    main()

"""``compress``: check the request, train the baseline, run each method, collect points."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from torch import nn

from ..checks import check_int, check_number
from ..experiment import Experiment
from . import distill, low_rank, prune, quantize, structured
from .context import Context, Skip
from .measure import weight_tensors
from .points import Compression, Point, Skipped

METHODS = ("prune", "prune_structured", "low_rank", "quantize", "distill")
RUNNERS = {
    "prune": prune.run,
    "prune_structured": structured.run,
    "low_rank": low_rank.run,
    "quantize": quantize.run,
}
DEFAULT_STRENGTHS: dict[str, tuple[float, ...]] = {
    "prune": prune.DEFAULT_STRENGTHS,
    "prune_structured": structured.DEFAULT_STRENGTHS,
    "low_rank": low_rank.DEFAULT_STRENGTHS,
    "quantize": quantize.DEFAULT_STRENGTHS,
    "distill": distill.DEFAULT_STRENGTHS,
}
DEFAULT_TOLERANCE = 0.01  # one point of accuracy: "as good as the baseline" for the choice
DEFAULT_TIMING = 0.2  # seconds of timed forwards per point: a stable median on a small net
FINETUNE_FRACTION = 0.25  # a fine-tune gets a quarter of the experiment's steps by default


def check_methods(methods: Any) -> tuple[str, ...]:
    if isinstance(methods, str):
        methods = (methods,)
    if not isinstance(methods, Sequence) or not methods:
        raise TypeError(
            f"methods must be a non-empty sequence of method names from {', '.join(METHODS)}; "
            f"got {methods!r}"
        )
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(
            f"unknown compression method {unknown[0]!r}; the methods are {', '.join(METHODS)}"
        )
    return tuple(dict.fromkeys(methods))


def check_strength(name: str, value: Any) -> float:
    value = check_number(name, value)
    if not 0 < value < 1:
        raise ValueError(
            f"{name} must lie strictly between 0 and 1 (the fraction removed), got {value:g}"
        )
    return value


def check_strengths(
    strengths: Sequence[float] | Mapping[str, Sequence[float]] | None, methods: tuple[str, ...]
) -> dict[str, tuple[float, ...]]:
    """Per method, the sweep: one sequence for every method that sweeps, or a dict."""
    if strengths is None:
        return {m: DEFAULT_STRENGTHS[m] for m in methods}
    if isinstance(strengths, Mapping):
        check_methods(list(strengths))
        chosen = {m: strengths.get(m, DEFAULT_STRENGTHS[m]) for m in methods}
    else:
        chosen = {m: strengths if DEFAULT_STRENGTHS[m] else () for m in methods}
    out = {}
    for method, values in chosen.items():
        if isinstance(values, int | float):
            values = (values,)
        out[method] = tuple(check_strength(f"strength for {method}", v) for v in values)
        if DEFAULT_STRENGTHS[method] and not out[method]:
            raise ValueError(f"give at least one strength for {method}")
    return out


def check_compressible(model: nn.Module, name: str) -> None:
    if not weight_tensors(model):
        raise ValueError(
            f"the model of {name!r} ({type(model).__name__}) has no weight with two or more "
            "axes (no Linear, Conv or similar layer), so there is nothing to compress"
        )


def compress(
    experiment: Experiment,
    methods: Sequence[str] = METHODS,
    strengths: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
    finetune_steps: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    temperature: float = distill.DEFAULT_TEMPERATURE,
    timing: float = DEFAULT_TIMING,
    model: nn.Module | None = None,
    progress: bool = False,
) -> Compression:
    """Train ``experiment`` (or take its trained ``model``), compress it by each method over
    a sweep of strengths, and measure every result.

    methods: any of prune, prune_structured, low_rank, quantize, distill. strengths: the
    sweep, fractions in (0, 1): of weights removed (prune), of channels removed
    (prune_structured), of singular-value energy dropped (low_rank), of the teacher's
    parameters the student does without (distill); quantize has none. One sequence serves
    every method that sweeps; a dict sets them per method. finetune_steps: the steps of each
    fine-tune (default a quarter of the experiment's steps). tolerance: the accuracy the
    chosen model may give up (0.01: one point). temperature: distillation's softmax
    temperature. timing: seconds of timed forwards per latency measurement. model: an
    already trained model of the experiment, used instead of training one.
    """
    if not isinstance(experiment, Experiment):
        raise TypeError(
            f"compress takes a deepdoctor.Experiment, got {type(experiment).__name__}; "
            "wrap the model builder and data in dd.Experiment(...)"
        )
    methods = check_methods(methods)
    sweeps = check_strengths(strengths, methods)
    default_steps = max(1, round(FINETUNE_FRACTION * experiment.steps))
    steps = check_int(
        "finetune_steps", default_steps if finetune_steps is None else finetune_steps, minimum=0
    )
    tolerance = check_number("tolerance", tolerance, minimum=0)
    temperature = check_number("temperature", temperature, positive=True)
    timing = check_number("timing", timing, positive=True)
    if model is None:
        model = experiment.build()
        check_compressible(model, experiment.name)
        experiment.run(model=model, progress="baseline" if progress else False)
    elif not isinstance(model, nn.Module):
        raise TypeError(f"model must be a trained nn.Module, got {type(model).__name__}")
    check_compressible(model, experiment.name)
    ctx = Context.make(experiment, model, steps, timing, progress)
    baseline = ctx.point("baseline", "trained, uncompressed", None, model)
    points, skipped = [], []
    for method in methods:
        try:
            for point in _run(method, ctx, sweeps[method], temperature):
                points.append(point)  # a method that skips later keeps its earlier points
        except Skip as exc:
            skipped.append(Skipped(method, str(exc)))
    return Compression(_describe(experiment), ctx.task, baseline, points, skipped, tolerance)


def _run(
    method: str, ctx: Context, sweep: tuple[float, ...], temperature: float
) -> Iterator[Point]:
    if method == "distill":
        return distill.run(ctx, sweep, temperature)
    return RUNNERS[method](ctx, sweep)


def _describe(experiment: Experiment) -> dict[str, Any]:
    return {
        "name": experiment.name,
        "description": experiment.description,
        "steps": experiment.steps,
        "batch_size": experiment.batch_size,
        "seed": experiment.seed,
    }

"""``search_structure``: a multi-objective search over depth, width and sparsity.

Each trial builds a network of the experiment's family (its ``models.spec`` builder with a
new depth and width, or ``models.mlp`` / ``models.cnn`` for its inputs), trains it with the
experiment's loop and budget, prunes it to the trial's sparsity (global magnitude) and
fine-tunes it, then reports two objectives: validation accuracy (up) and connections
(down). Optuna's NSGA-II sampler (Deb et al. 2002) evolves the population towards the Pareto
front: the evolutionary structure search the field describes. With ``storage`` (an Optuna
storage URL such as ``sqlite:///search.db``) the study is kept there and a second call with
the same ``study_name`` resumes it, running only the trials still missing.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import models
from ..checks import check_int, check_number
from ..experiment import Experiment
from .context import Context
from .points import Compression, Point, mark_pareto
from .prune import make_permanent, prune_to

SPARSITY_MAX = 0.95  # beyond this a small net keeps too few weights to mean anything
PRUNE_BELOW = 0.01  # a sparsity under 1% is "dense": not worth a fine-tune
DEFAULT_TRIALS = 24
DEFAULT_POPULATION = 8  # small enough that 24 trials make three generations


@dataclass
class StructureSearch:
    """The search's trials (figures only) and its Pareto front as points with models."""

    points: list[Point]  # the front: no trial beats one on both objectives
    trials: list[dict[str, Any]]  # every finished trial: params and figures
    study_name: str
    storage: str | None
    study: Any = field(repr=False, default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_name": self.study_name,
            "storage": self.storage,
            "sampler": "optuna NSGAIISampler",
            "points": [p.to_dict() for p in self.points],
            "trials": self.trials,
        }


def family(
    experiment: Experiment, probe: nn.Module, batch: torch.Tensor
) -> Callable[..., nn.Module]:
    """A function (depth, width) -> a fresh model of the experiment's kind."""
    builder = experiment.model
    if isinstance(builder, models.BuilderSpec) and {"depth", "width"} <= set(builder.kwargs):
        return lambda depth, width: builder.replace(depth=depth, width=width)()
    with torch.no_grad():
        n_out = int(probe.eval()(batch[:1]).shape[-1])
    shape = tuple(batch.shape[1:])
    if len(shape) == 1:
        return lambda depth, width: models.mlp(shape[0], n_out, depth=depth, width=width)
    if len(shape) in (2, 3):
        return lambda depth, width: models.cnn(shape, n_out, depth=depth, width=width)
    raise ValueError(
        f"search_structure builds models with deepdoctor.models and cannot for inputs of "
        f"shape {shape}; give the experiment a models.spec(...) builder with depth and width"
    )


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def _trial_model(
    ctx: Context, build: Callable[..., nn.Module], params: dict[str, Any]
) -> tuple[nn.Module, int]:
    """Build, train, prune and fine-tune one trial's network; return it and its steps."""
    torch.manual_seed(ctx.experiment.seed)
    model = build(params["depth"], params["width"])
    ctx.experiment.run(model=model)
    steps = ctx.experiment.steps
    if params["sparsity"] >= PRUNE_BELOW:
        prune_to(model, params["sparsity"])
        steps += ctx.finetune(model)
        make_permanent(model)
    return model, steps


def _point(
    ctx: Context, model: nn.Module, params: dict[str, Any], steps: int, number: int
) -> Point:
    setting = f"depth {params['depth']}, width {params['width']}, sparsity {params['sparsity']:.0%}"
    details = {**params, "trial": number}
    return ctx.point("search", setting, None, model, finetune_steps=steps, details=details)


def search_structure(
    experiment: Experiment,
    n_trials: int = DEFAULT_TRIALS,
    max_depth: int = 4,
    max_width: int = 512,
    storage: str | None = None,
    study_name: str = "deepdoctor-structure",
    population_size: int = DEFAULT_POPULATION,
    finetune_steps: int | None = None,
    timing: float = 0.05,
    compression: Compression | None = None,
) -> StructureSearch:
    """Search depth (1..max_depth), width (8..max_width, log scale) and sparsity (0..0.95)
    for validation accuracy against connections with Optuna's NSGA-II sampler.

    n_trials: the trials the study should hold when done (a resumed study runs only the rest).
    storage: an Optuna storage URL (``sqlite:///search.db``) to keep and resume the study.
    compression: a ``Compression`` to add the front to, so one plot shows both.
    """
    try:
        import optuna
    except ImportError as exc:
        raise ImportError(
            f"search_structure needs Optuna ({exc}); pip install 'deepdoctor[compress]'"
        ) from exc
    if not isinstance(experiment, Experiment):
        raise TypeError(
            f"search_structure takes a deepdoctor.Experiment, got {type(experiment).__name__}"
        )
    n_trials = check_int("n_trials", n_trials, minimum=1)
    max_depth = check_int("max_depth", max_depth, minimum=1)
    max_width = check_int("max_width", max_width, minimum=8)
    population_size = check_int("population_size", population_size, minimum=2)
    timing = check_number("timing", timing, positive=True)
    default_steps = max(1, experiment.steps // 4)
    steps = check_int(
        "finetune_steps", default_steps if finetune_steps is None else finetune_steps, minimum=0
    )
    probe = experiment.build()
    ctx = Context.make(experiment, probe, steps, timing)
    if ctx.task == "regression":
        raise ValueError("search_structure maximises validation accuracy; this task is regression")
    build = family(experiment, probe, ctx.batch)
    with _quiet_optuna():
        study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            load_if_exists=storage is not None,
            directions=["maximize", "minimize"],
            sampler=optuna.samplers.NSGAIISampler(
                population_size=population_size, seed=experiment.seed
            ),
        )
        models_by_trial: dict[int, nn.Module] = {}

        def objective(trial: Any) -> tuple[float, float]:
            params = {
                "depth": trial.suggest_int("depth", 1, max_depth),
                "width": trial.suggest_int("width", 8, max_width, log=True),
                "sparsity": trial.suggest_float("sparsity", 0.0, SPARSITY_MAX),
            }
            model, spent = _trial_model(ctx, build, params)
            point = _point(ctx, model, params, spent, trial.number)
            models_by_trial[trial.number] = model
            for key, value in point.to_dict().items():
                if key not in ("details", "note", "pareto", "method"):
                    trial.set_user_attr(key, value)
            accuracy = point.val_accuracy if math.isfinite(point.val_accuracy) else 0.0
            return accuracy, float(point.connections)

        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        study.optimize(objective, n_trials=max(0, n_trials - len(done)))
    return _result(study, ctx, build, models_by_trial, storage, compression)


def _result(
    study: Any,
    ctx: Context,
    build: Callable[..., nn.Module],
    trained: dict[int, nn.Module],
    storage: str | None,
    compression: Compression | None,
) -> StructureSearch:
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    trials = [{"number": t.number, **t.params, **t.user_attrs} for t in complete]
    front = []
    for t in sorted(study.best_trials, key=lambda t: t.values[1]):
        model = trained.get(t.number)
        note = ""
        if model is None:  # a trial from an earlier session: its recipe is deterministic
            model, _ = _trial_model(ctx, build, t.params)
            note = "retrained after the study was resumed"
        spent = int(t.user_attrs.get("finetune_steps", 0))
        point = _point(ctx, model, t.params, spent, t.number)
        point.note = note
        front.append(point)
    mark_pareto(front, ctx.task)
    result = StructureSearch(front, trials, study.study_name, storage, study)
    if compression is not None:
        compression.include(result)
    return result

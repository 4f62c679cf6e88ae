"""diagnose: train a copy of the model under the Probe, then name what went wrong.

The run is short and watched: a Probe records per-layer scalars into a Trace, the detectors
(``deepdoctor.detectors.detect``) read the Trace, and the Diagnosis carries the findings
with the Trace and the History they came from. The user's model and optimizer are copied
first (unless ``in_place=True``), so diagnosing never changes them.

A run that blows up is stopped early: training already stops at a non-finite loss, and a
callback stops it when the loss exceeds ``BLOWUP_FACTOR`` times its starting value, so the
remaining steps are not wasted on a run that has no way back.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import training
from .batch import Inputs
from .checks import check_int, check_number
from .detectors import BLOWUP_FACTOR, coverage, detect, fine_tuning
from .experiment import Experiment
from .findings import Finding
from .pretrained import PretrainedSpec
from .probe import Probe
from .reference import fit_reference
from .results import Result
from .trace import Trace
from .training import (
    History,
    OptimizerSpec,
    TrainState,
    as_tensors,
    infer_task,
    is_loader,
)

EVERY_TARGET_SAMPLES = 20  # sample activations ~20 times per run: enough for a median
MAX_EVERY = 16  # ... but at least every 16th step, the Probe's own default
BLOWUP_WINDOW = 3  # the starting loss is the median of the first 3 steps (one batch is noisy)


@dataclass
class Diagnosis(Result):
    """What a watched training run showed: findings, with the Trace and History behind them.

    ``stopped_at`` is the step at which a critical problem ended the run early (None when it
    ran its course) and ``stop_reason`` says why (``nonfinite_loss``, ``loss_blowup``, or the
    loop's own reasons such as ``early_stopping``). ``model`` is the trained copy.
    ``coverage``: what the Trace held and what could not be judged (``detectors.coverage``).
    """

    result_type = "diagnosis"

    findings: list[Finding]
    trace: Trace
    history: History
    model: nn.Module | None = None
    stopped_at: int | None = None
    stop_reason: str = "completed"
    experiment: dict[str, Any] = field(default_factory=dict)
    coverage: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["experiment"] = {
            k: self.experiment.get(k)
            for k in ("name", "description", "steps", "seed", "batch_size")
        }
        out["stopped"] = {"reason": self.stop_reason, "step": self.stopped_at}
        out["history"] = self.history.to_dict()
        out["trace"] = self.trace.to_dict()
        # The one figure of learning speed at the start and end that page and terminal show.
        out["learning_speed"] = self.trace.learning_speed_at_ends()
        if self.fine_tuning is not None:
            out["fine_tuning"] = self.fine_tuning
        return out

    @property
    def fine_tuning(self) -> dict[str, Any] | None:
        """The per-part reading of a fine-tuning run (``diagnose(..., pretrained=...)``):
        pretrained, frozen and head layers, their update-to-weight ratios, the pretrained
        layers' drift in the first steps (``detectors.transfer.fine_tuning``); else None."""
        return fine_tuning(self.trace)

    @classmethod
    def from_experiment(cls, experiment: Experiment, **options: Any) -> Diagnosis:
        return diagnose_experiment(experiment, **options)

    def __repr__(self) -> str:
        kinds = ", ".join(f"{f.kind} ({f.severity})" for f in self.findings) or "none"
        state = "nothing judged" if self.nothing_judged else "healthy"
        state = state if self.healthy else "unhealthy"
        return f"Diagnosis({state}; findings: {kinds}; stopped: {self.stop_reason})"


class BlowupStop:
    """Stop the run once the loss exceeds ``factor`` times its starting value."""

    def __init__(self, factor: float = BLOWUP_FACTOR) -> None:
        self.factor = factor
        self.first: list[float] = []

    def on_step_end(self, state: TrainState) -> None:
        loss = state.history.loss[-1]
        if len(self.first) < BLOWUP_WINDOW:
            self.first.append(loss)
        start = sorted(self.first)[len(self.first) // 2]
        if loss > self.factor * start and start > 0:
            state.stop = "loss_blowup"


def copy_optimizer(
    optimizer: torch.optim.Optimizer, source: nn.Module, target: nn.Module
) -> torch.optim.Optimizer:
    """The same optimizer (class, hyper-parameters, state) bound to ``target``'s parameters.

    Parameters are matched by their position in ``source.parameters()``, which a deep copy
    keeps.
    """
    position = {id(p): i for i, p in enumerate(source.parameters())}
    copied = list(target.parameters())
    groups = []
    for group in optimizer.param_groups:
        missing = [p for p in group["params"] if id(p) not in position]
        if missing:
            raise ValueError(
                f"the optimizer holds {len(missing)} parameter tensors that are not in the "
                "model; build the optimizer from model.parameters(), or pass in_place=True"
            )
        groups.append({**group, "params": [copied[position[id(p)]] for p in group["params"]]})
    cls: Any = type(optimizer)
    try:
        new = cls(groups, **optimizer.defaults)
    except TypeError:  # an optimizer whose constructor does not take all its defaults back
        new = cls(groups)
    # load_state_dict keeps tensors that already have the right dtype and device, so without
    # the deep copy both optimizers would update the same momentum buffers in place.
    new.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    return new


PREFLIGHT_SAMPLES = 4  # the shape check runs the model on this many training samples


def _preflight(model: nn.Module, train_data: Any, loss_fn: Any) -> torch.Size:
    """Run the model once on a few training samples, so a model that cannot fit the data
    fails here with one sentence, not from deep inside torch in the middle of training.
    Returns the shape of its prediction."""
    X, y = training.loader_tensors(train_data, PREFLIGHT_SAMPLES)
    task = infer_task(y, loss_fn)
    was_training = model.training
    model.eval()  # no batch-norm statistics updated, no dropout drawn
    try:
        with torch.no_grad():
            try:
                out, _, _ = training.forward_loss(
                    model, X, y, loss_fn or training.default_loss(y), task, loss_fn is None
                )
            except RuntimeError as exc:
                first = str(exc).splitlines()[0]
                shape = (
                    X.describe()
                    if isinstance(X, Inputs)
                    else f"of shape {tuple(X.shape[1:])} per sample"
                )
                raise ValueError(
                    f"the model cannot run on the training inputs {shape} ({first}); make "
                    "its first layer match the data"
                ) from exc
    finally:
        model.train(was_training)
    return out.shape


def diagnose(
    model: nn.Module,
    train: Any,
    val: Any = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    optimizer: OptimizerSpec = None,
    steps: int = 200,
    seed: int = 0,
    *,
    batch_size: int = 64,
    in_place: bool = False,
    every: int | None = None,
    progress: bool | str = False,
    n_classes: int | None = None,
    clip_grad: float | None = None,
    schedule: str = "constant",
    warmup_steps: int | None = None,
    early_stopping: int | None = None,
    eval_every: int | None = None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    blowup: float = BLOWUP_FACTOR,
    reference: bool = True,
    pretrained: PretrainedSpec = None,
    name: str = "diagnose",
    description: str = "",
) -> Diagnosis:
    """Train a copy of ``model`` for ``steps`` steps under the Probe and name its problems.

    train, val: a DataLoader or a tuple (X, y). loss_fn: default cross-entropy for integer
    targets, MSE otherwise. optimizer: an instance (copied along with the model) or a
    factory ``params -> optimizer``; default SGD(lr=0.1). in_place: train ``model`` and
    ``optimizer`` themselves. every: record activations every so many steps (default: about
    20 times per run). blowup: stop when the loss exceeds this multiple of its start.
    reference: fit cheap scikit-learn models on the same split (``deepdoctor.reference``,
    about a second) as the yardstick for underfitting; False to skip them.
    pretrained: for a fine-tuning run, the pretrained modules' names (``["encoder"]``) or the
    state dict loaded into the model (``deepdoctor.pretrained``); the Diagnosis then reads the
    run per part (``diag.fine_tuning``) and warns when the pretrained layers are wiped out.
    The other keywords are passed to ``deepdoctor.training.train``.

    >>> import deepdoctor as dd
    >>> split = dd.data.load("digits")
    >>> diag = dd.diagnose(dd.models.mlp(64, 10), split.train, split.val, steps=100)
    >>> sorted(f.kind for f in diag.findings if f.is_problem)
    []
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be an nn.Module, got {type(model).__name__}; "
            "to diagnose an Experiment use diagnose_experiment(exp)"
        )
    steps = check_int("steps", steps, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    blowup = check_number("blowup", blowup, minimum=1.0)
    if every is None:
        every = max(1, min(MAX_EVERY, steps // EVERY_TARGET_SAMPLES))
    every = check_int("every", every, minimum=1)
    if not is_loader(train):
        train = as_tensors(train, "train")
    if val is not None and not is_loader(val):
        val = as_tensors(val, "val")
    prediction = _preflight(model, train, loss_fn)
    if not in_place:
        original = model
        model = copy.deepcopy(model)
        if isinstance(optimizer, torch.optim.Optimizer):
            optimizer = copy_optimizer(optimizer, original, model)

    facts = training.data_facts(train, loss_fn, n_classes, prediction)
    facts.update(steps_planned=steps, batch_size=batch_size, seed=seed, blowup_factor=blowup)
    probe_opt = optimizer if isinstance(optimizer, torch.optim.Optimizer) else None
    with Probe(model, optimizer=probe_opt, every=every, pretrained=pretrained) as probe:
        for key, value in facts.items():
            setattr(probe.trace.facts, key, value)
        history = training.train(
            model,
            train,
            val,
            loss_fn=loss_fn,
            optimizer=optimizer,
            steps=steps,
            batch_size=batch_size,
            seed=seed,
            clip_grad=clip_grad,
            schedule=schedule,
            warmup_steps=warmup_steps,
            early_stopping=early_stopping,
            eval_every=eval_every,
            probe=probe,
            progress=progress,
            augment=augment,
            callbacks=[BlowupStop(blowup)],
        )
    trace = probe.trace
    trace.facts.reference = (
        fit_reference(train, val, loss_fn).to_dict() if reference else {"skipped": "turned off"}
    )
    early = history.stopped not in ("completed",)
    return Diagnosis(
        findings=detect(trace),
        trace=trace,
        history=history,
        coverage=coverage(trace),
        model=model,
        stopped_at=history.stop_step if early else None,
        stop_reason=history.stopped,
        experiment={
            "name": name,
            "description": description,
            "steps": steps,
            "seed": seed,
            "batch_size": batch_size,
        },
    )


def diagnose_experiment(
    experiment: Experiment,
    *,
    steps: int | None = None,
    seed: int | None = None,
    progress: bool | str = False,
    **options: Any,
) -> Diagnosis:
    """Diagnose an Experiment: a fresh model from its builder, trained with its settings."""
    if not isinstance(experiment, Experiment):
        raise TypeError(
            f"diagnose_experiment needs a deepdoctor.Experiment, got {type(experiment).__name__}"
        )
    exp = experiment
    if steps is not None or seed is not None:
        exp = exp.replace(
            steps=exp.steps if steps is None else steps, seed=exp.seed if seed is None else seed
        )
    model = exp.build()
    return diagnose(
        model,
        exp.train,
        exp.val,
        loss_fn=exp.loss_fn,
        optimizer=exp.optimizer,
        steps=exp.steps,
        seed=exp.seed,
        batch_size=exp.batch_size,
        in_place=True,
        progress=progress,
        n_classes=exp.n_classes,
        clip_grad=exp.clip_grad,
        schedule=exp.schedule,
        warmup_steps=exp.warmup_steps,
        early_stopping=exp.early_stopping,
        eval_every=exp.eval_every,
        augment=exp.augment,
        pretrained=exp.pretrained,
        name=exp.name,
        description=exp.description,
        **options,
    )

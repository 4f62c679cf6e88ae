"""treat: apply the remedies to fresh copies and keep only what measurably helps.

The search, and why it is shaped this way
-----------------------------------------
Compute is counted in baseline runs (one run = the experiment's ``steps`` optimizer steps);
``budget`` is how many treat may spend, 3 by default. A ledger keeps the account: every run
below is charged to it with the steps it took, a run is started only when the ledger says it
fits, and ``Treatment.compute`` is what the ledger spent. It counts the short runs a remedy
makes while it is applied too (the learning-rate range test of lower_lr, raise_lr and
lr_warmup, up to 100 steps: one sweep of an experiment, read by all three and by lower_lr's
further cuts, is charged once), and a screened candidate is verified as it was screened,
not applied again.

1. Baseline (1 run): the untreated experiment, probed and diagnosed. Its warning and
   critical findings name the candidate remedies, best first. A healthy baseline ends here:
   nothing is applied, and the Treatment says so.
2. Noise: the baseline again from the next seed, for ``SCREEN_FRACTION`` of the steps, and
   from one more seed when the two disagree. The noise margin is two robust standard
   deviations (from the median absolute deviation) of the screen's score over those seeds,
   so one broken rerun does not inflate it; a candidate must beat the baseline by more than
   it (and by at least the minimum gain: a point of accuracy, or 2% of the loss).
3. Screening: each candidate (at most ``MAX_CANDIDATES``) trains from the baseline's seed
   for ``SCREEN_FRACTION`` of the steps, or just past the step where the baseline blew up,
   and is compared with the baseline's own evaluation at the same step (or the baseline's
   final score when that is lower: a run that oscillated or decayed is judged by what it
   delivered, not by a moment it did not keep). Trainability
   remedies (init, activation, normalisation, learning rate...) show within a few dozen
   steps; regularisation remedies only show late, so they are screened over the full run.
   Such a full-length screen is probed and is exactly the verification run (same seed,
   data order and budget), so when it passes it is kept without a second run; it may
   therefore use the run set aside for verification (otherwise, after 1 + 0.2 runs and
   that reserve, a budget of 3 leaves 0.8: never enough to screen one). A short screen
   starts only when the budget left holds it and its verification.
   When no short screen and its verification fit any more and nothing has passed, the run
   kept for the verification goes to the best-ranked candidate left out, screened over the
   full run (its own verification) rather than left idle. When lower_lr's screen still
   blows up (its loss ends above where it started, or not finite), it is screened again at
   a tenth of that rate (at most twice).
   A remedy that cannot be applied automatically is recorded as a prescription and costs
   nothing; one that throws is recorded with its error and the search goes on.
4. Combination: when two compatible remedies both passed screening, their combination is
   screened too.
5. Verification (1 run): the best screened candidate trains over the full budget, probed,
   from the baseline's seed and data order. It is kept only if it beats the baseline's final
   score by more than the noise margin, beats the trivial predictor (the majority class, or
   the training mean) by a real margin, and raises no critical finding that the baseline did
   not (``deepdoctor.scoring``). The score is validation accuracy, balanced accuracy when the
   classes are imbalanced, or minus the loss; ``Treatment.scoring`` says which and why. Its
   findings are the Treatment's findings; the baseline's are ``findings_before``.
6. Greedy rounds: when a remedy was kept and the budget left still holds a noise run, a
   screen and a verification, the treated experiment is treated again (steps 2-5), its
   verified run the new baseline, for the findings that remain (at most ``MAX_ROUNDS``).

The headline (``Treatment.verdict``, first in the message) is "repaired" when a remedy was
kept and the treated run has no warning or critical finding, "partly repaired" with what
remains (``Treatment.remaining``) when it still has some, "not repaired" when nothing was
kept, and "healthy" when there was nothing to repair. Candidates are ranked root cause
first: the remedies of a finding that another finding is ``caused_by``, then those of the
data's own problems (unscaled inputs: every other statistic is measured on them), then by
severity.

Every remedy set the search considered is a ``Trial`` with its ``stage`` (screen, combine,
verify), its ``round`` and a ``status``: kept, passed (screening, not kept), no_gain,
not_tried (``reason`` says why, in words), error, or prescription. The search itself lives
in ``deepdoctor.search``.

Ranking candidates by the diagnosis (rather than trying remedies at random) is what should
make this better than chance; ``benchmarks/`` compares it with a random-remedy search on the
same budget.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checks import check_int, check_number
from .experiment import Experiment
from .findings import Finding, sort_findings
from .remedies.data import StandardizedInputs
from .results import Result
from .search import (
    DEFAULT_BUDGET,
    MAX_CANDIDATES,
    SCREEN_FRACTION,
    STATUSES,
    Search,
    Trial,
    metrics_of,
)
from .training import History, OptimizerSpec
from .treated_code import input_scaling, write_apply_files
from .trials import engine_for

__all__ = ["DEFAULT_BUDGET", "MAX_CANDIDATES", "STATUSES", "Treatment", "Trial", "treat"]


@dataclass
class Treatment(Result):
    """The outcome of treat: what was applied, before and after, and every trial."""

    result_type = "treatment"

    applied: list[str]
    before: dict[str, float]
    after: dict[str, float]
    trials: list[Trial]
    model: nn.Module
    findings: list[Finding]
    findings_before: list[Finding]
    noise: float
    compute: float  # baseline runs spent
    message: str
    experiment: Experiment
    treated: Experiment
    history_before: History | None = None
    history_after: History | None = None
    interrupted: bool = False
    rounds: int = 1
    # "repaired" (a remedy kept, no warning or critical finding left), "partly repaired"
    # (kept, but ``remaining`` lists what is left), "not repaired" (nothing kept over a run
    # with problems) or "healthy" (nothing to repair).
    verdict: str = "not repaired"
    remaining: list[str] = field(default_factory=list)
    # What runs were compared by (``deepdoctor.scoring.Scoring.to_dict``).
    scoring: dict[str, Any] = field(default_factory=dict)
    # The treated run's Diagnosis (its trace included), the baseline of a next round.
    diagnosis_after: Any = field(default=None, repr=False, compare=False)

    @property
    def prescriptions(self) -> list[Trial]:
        return [t for t in self.trials if t.status == "prescription"]

    def snippet(self) -> str:
        """Python lines that make the applied changes by hand in the user's own code."""
        lines = [f"# deepdoctor treat: {', '.join(self.applied) or 'no change'}"]
        for change in self.treated.meta.get("changes", []):
            lines.append(f"# {change['remedy']}")
            lines.append(change["code"])
        return "\n".join(lines) + "\n"

    def save(self, directory: str | Path) -> Path:
        """Write report.html and treatment.json, and what a user applies: treated_model.pt
        (the trained model's state_dict; ``model.model``'s when ``model`` standardises its
        inputs), changes.py (runnable: ``build_treated()``,
        ``prepare_inputs(x)``, ``load_treated()``; see ``deepdoctor.treated_code``) and,
        when standardize_inputs was kept, input_scaling.pt. Returns the report's path. The
        CLI ``deepdoctor treat`` writes the same files (``write_files``)."""
        return self.write_files(directory)[-1]

    def write_files(self, directory: str | Path) -> list[Path]:
        """Every file ``save`` writes, written; the report last (treatment.json in its place
        when the HTML report's optional dependencies are missing)."""
        directory = Path(directory)
        trained = self.model.model if isinstance(self.model, StandardizedInputs) else self.model
        written = write_apply_files(self.treated, trained, directory, self.message)
        try:
            return [*written, directory / "treatment.json", super().save(directory)]
        except ImportError:  # the HTML report is optional; Result.save wrote the JSON first
            return [*written, directory / "treatment.json"]

    def to_dict(self) -> dict[str, Any]:
        def clean(d: dict[str, float]) -> dict[str, float | None]:
            return {k: (v if math.isfinite(v) else None) for k, v in d.items()}

        out = super().to_dict()
        out.update(
            {
                "experiment": {
                    "name": self.experiment.name,
                    "description": self.experiment.description,
                    "steps": self.experiment.steps,
                    "seed": self.experiment.seed,
                    "batch_size": self.experiment.batch_size,
                },
                "message": self.message,
                "verdict": self.verdict,
                "remaining": list(self.remaining),
                "scoring": dict(self.scoring),
                "applied": list(self.applied),
                "before": clean(self.before),
                "after": clean(self.after),
                "noise": self.noise if math.isfinite(self.noise) else None,
                "compute": self.compute,
                "interrupted": self.interrupted,
                "rounds": self.rounds,
                "trials": [t.to_dict() for t in self.trials],
                "findings_before": [f.to_dict() for f in sort_findings(self.findings_before)],
                "snippet": self.snippet(),
                "history_before": self.history_before.to_dict() if self.history_before else None,
                "history_after": self.history_after.to_dict() if self.history_after else None,
            }
        )
        return out


def treat(
    model: nn.Module | Experiment,
    train: Any = None,
    val: Any = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    optimizer: OptimizerSpec = None,
    steps: int | None = None,
    seed: int | None = None,
    *,
    batch_size: int | None = None,
    budget: float | None = None,
    remedies: list[str] | None = None,
    progress: bool = False,
    workers: int | None = None,
    ray: str | bool | None = None,
    cache: str | Path | None = None,
) -> Treatment:
    """Diagnose, try the remedies the findings name on fresh copies, keep what is verified.

    model: an ``nn.Module`` with its data, as for ``diagnose`` (its state now is the start of
    every run: treat trains deep copies, and an optimizer instance becomes a factory of its
    class and settings; defaults steps 200, seed 0, batch_size 64), or an ``Experiment``
    (then steps, seed, batch_size, loss_fn and optimizer, when given, override its own).
    budget: compute treat may spend, in runs of the untreated experiment (default 3).
    remedies: screen these (in this order, one round) instead of the ones the diagnosis names.
    workers: run trials in this many local worker processes (spawned; the experiment's
    builder, optimizer factory and loss must pickle: module-level functions, not lambdas).
    ray: run trials on a Ray cluster: its address (``"host:port"``, ``"ray://host:10001"``,
    ``"auto"``), or True for the Ray instance this process is connected to (else a local one).
    cache: a directory where finished trials are kept, so that a treat interrupted (Ctrl-C)
    and run again with the same cache does not rerun them (``deepdoctor.trials`` says what
    the key covers). Results are the same to the last digit wherever trials run.

    >>> tr = treat(get_preset("sigmoid-mlp50-digits"))   # doctest: +SKIP
    >>> tr.applied, tr.before["val_accuracy"], tr.after["val_accuracy"]  # doctest: +SKIP
    >>> tr = treat(model, (X, y), val=(X_val, y_val), optimizer=opt, steps=300)  # doctest: +SKIP
    """
    settings = {"loss_fn": loss_fn, "steps": steps, "seed": seed, "batch_size": batch_size}
    if isinstance(model, Experiment):
        exp = _override(model, train, val, optimizer, settings)
    elif isinstance(model, nn.Module):
        exp = _experiment_of(model, train, val, optimizer, settings)
    else:
        hint = "; a model builder goes in dd.Experiment(builder, train)" if callable(model) else ""
        raise TypeError(
            f"treat takes an nn.Module (with its training data) or a deepdoctor.Experiment, "
            f"got {type(model).__name__}{hint}"
        )
    budget = DEFAULT_BUDGET if budget is None else check_number("budget", budget)
    if budget < 1.0:
        raise ValueError(
            f"budget {budget} is too small to run even the untreated baseline: the minimum is "
            f"1.0 (one run of {exp.steps} steps); at least "
            f"{2 + 2 * SCREEN_FRACTION:.1f} lets treat screen and verify one remedy"
        )
    if workers is not None:
        workers = check_int("workers", workers, minimum=1)
    with engine_for(exp, workers=workers, ray=ray, cache=cache) as engine:
        search = Search(exp, budget, remedies=remedies, progress=progress, engine=engine)
        return _treatment(search.run())


def _override(
    exp: Experiment, train: Any, val: Any, optimizer: OptimizerSpec, settings: dict[str, Any]
) -> Experiment:
    """The experiment with the settings given to treat in place of its own."""
    if train is not None or val is not None:
        given = train if train is not None else val
        hint = (
            "; pass the budget as budget="
            if isinstance(given, numbers.Real)
            else "; to train on other data use experiment.replace(train=..., val=...)"
        )
        raise TypeError(
            f"treat(experiment, ...) trains on the experiment's own data, so train and val "
            f"must not be given (got {type(given).__name__}){hint}"
        )
    changes = {k: v for k, v in settings.items() if v is not None}
    if optimizer is not None:
        changes["optimizer"] = _optimizer_factory(optimizer)
    return exp.replace(**changes) if changes else exp


def _experiment_of(
    model: nn.Module, train: Any, val: Any, optimizer: OptimizerSpec, settings: dict[str, Any]
) -> Experiment:
    """An Experiment whose builder returns a fresh deep copy of ``model`` as it is now."""
    if train is None:
        raise TypeError("treat(model, train) needs the training data: a DataLoader or (X, y)")
    snapshot = copy.deepcopy(model)
    given = {k: v for k, v in settings.items() if v is not None}  # else diagnose's defaults
    return Experiment(
        lambda: copy.deepcopy(snapshot),
        train,
        val,
        optimizer=_optimizer_factory(optimizer, model),
        name=type(model).__name__,
        **given,
    )


def _optimizer_factory(
    optimizer: OptimizerSpec, model: nn.Module | None = None
) -> Callable[..., torch.optim.Optimizer] | None:
    """A factory ``params -> optimizer`` of the instance's class and settings (a factory or
    None is returned as it is). treat trains changed models from scratch, so the factory
    takes the settings of the instance's one parameter group and none of its state."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    cls: Any = type(optimizer)
    groups = optimizer.param_groups
    if len(groups) != 1:
        raise ValueError(
            f"the {cls.__name__} optimizer has {len(groups)} parameter groups, and treat, "
            "which builds an optimizer for each changed copy of the model, cannot tell which "
            "group a parameter a remedy adds belongs to; pass a factory params -> optimizer, "
            "e.g. optimizer=lambda params: torch.optim.SGD(params, lr=0.1)"
        )
    if model is not None:
        held = {id(p) for p in groups[0]["params"]}
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        if held != trainable:
            raise ValueError(
                f"the optimizer's {len(held)} parameter tensors are not the model's "
                f"{len(trainable)} trainable ones, and treat gives each fresh copy an "
                "optimizer over all of its trainable parameters: build the optimizer from "
                "model.parameters(), or pass a factory params -> optimizer"
            )
    settings = {k: v for k, v in groups[0].items() if k != "params"}
    defaults = dict(optimizer.defaults)

    def make(params: Any) -> torch.optim.Optimizer:
        group = [{"params": list(params), **settings}]
        try:
            return cls(group, **defaults)
        except TypeError:  # an optimizer whose constructor does not take all its defaults back
            return cls(group)

    return make


def _treatment(search: Search) -> Treatment:
    """The Treatment: before from the first round, after from the last one that kept."""
    first, final = search.rounds[0], search.final
    verdict, remaining = _verdict(search.applied, first.base.findings, final.run.findings)
    message = f"{verdict}: {search.message}"
    if verdict == "partly repaired":
        message += f"; what remains: {', '.join(remaining)}"
    return Treatment(
        applied=search.applied,
        before=first.before,
        after=metrics_of(final.run.history),
        trials=search.trials,
        model=_taking_raw_inputs(final.run.model, final.treated),
        findings=final.run.findings,
        findings_before=first.base.findings,
        noise=first.noise,
        compute=search.ledger.compute,
        message=message,
        experiment=first.exp,
        treated=final.treated,
        history_before=first.base.history,
        history_after=final.run.history,
        interrupted=search.interrupted,
        rounds=len(search.rounds),
        verdict=verdict,
        remaining=remaining,
        scoring=first.scoring.to_dict(),
        diagnosis_after=final.run,
    )


def _taking_raw_inputs(model: nn.Module, treated: Experiment) -> nn.Module:
    """The trained model, behind the kept input standardisation when there is one: the
    model treat hands back takes the inputs the user holds (its "after" is measured on
    them), not the standardised ones it trained on."""
    scaling = input_scaling(treated)
    if scaling is None:
        return model
    return StandardizedInputs(model, scaling["mean"], scaling["std"])


def _verdict(
    applied: list[str], before: list[Finding], after: list[Finding]
) -> tuple[str, list[str]]:
    """The headline word, and the problem kinds the treated run still shows."""
    if not any(f.is_problem for f in before):
        return "healthy", []
    remaining = [f.kind for f in sort_findings(after) if f.is_problem]
    remaining = list(dict.fromkeys(remaining))
    if not applied:
        return "not repaired", remaining
    return ("partly repaired" if remaining else "repaired"), remaining

"""treat: apply the remedies to fresh copies and keep only what measurably helps.

The search, and why it is shaped this way
-----------------------------------------
Compute is counted in baseline runs (one run = the experiment's ``steps`` optimizer steps);
``budget`` is how many treat may spend, 3 by default.

1. Baseline (1 run): the untreated experiment, probed and diagnosed. Its warning and
   critical findings name the candidate remedies, best first. A healthy baseline ends here:
   nothing is applied, and the Treatment says so.
2. Noise: the baseline again from the next seed, for ``SCREEN_FRACTION`` of the steps. The
   gap between the two seeds at that point is the seed-to-seed noise; a candidate must beat
   the baseline by more than it (and by at least ``MIN_GAIN``).
3. Screening: each candidate trains from the baseline's seed for ``SCREEN_FRACTION`` of the
   steps and is compared with the baseline's own evaluation at the same step. Trainability
   remedies (init, activation, normalisation, learning rate...) show within a few dozen
   steps; regularisation remedies only show late, so they are screened over the full run.
   Such a full-length screen is probed and is exactly the verification run (same seed,
   data order and budget), so when it passes it is kept without a second run; it may
   therefore use the run set aside for verification (otherwise, after 1 + 0.2 runs and
   that reserve, a budget of 3 leaves 0.8: never enough to screen one).
   A remedy that cannot be applied automatically is recorded as a prescription and costs
   nothing; one that throws is recorded with its error and the search goes on.
4. Combination: when two compatible remedies both passed screening, their combination is
   screened too.
5. Verification (1 run): the best screened candidate trains over the full budget, probed,
   from the baseline's seed and data order. It is kept only if it beats the baseline's final
   validation metric by more than the noise margin. Its findings are the Treatment's
   findings; the baseline's are ``findings_before``.

Ranking candidates by the diagnosis (rather than trying remedies at random) is what should
make this better than chance; ``benchmarks/`` compares it with a random-remedy search on the
same budget.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ._checks import check_number
from ._progress import progress_bar
from .experiment import Experiment
from .findings import Finding, sort_findings
from .remedies import REMEDIES, Context, Prescription, apply_remedies, compatible
from .results import Result
from .training import History, is_loader, loader_tensors

DEFAULT_BUDGET = 3.0  # baseline runs; AUTOTRAINER reports 2.21x for its repairs
SCREEN_FRACTION = 0.2  # of the steps: enough for trainability fixes to separate from chance
MIN_GAIN_ACCURACY = 0.01  # a kept remedy gains at least one point of validation accuracy ...
MIN_GAIN_LOSS = 0.02  # ... or, without accuracy, 2% of the validation loss
MAX_CANDIDATES = 6  # remedies screened at most; the rest are listed as not tried
# The Deep Learning Tuning Playbook: clipping on more than half the steps is a sign that the
# learning rate is too high, and lowering it is the better fix; treat then screens lower_lr.
CLIP_MOST_STEPS = 0.5
MAX_ROUNDS = 3  # greedy rounds: treat the treated experiment for what remains
# A next round needs its noise run, one screen and one verification.
NEXT_ROUND_MINIMUM = 1.0 + 2 * SCREEN_FRACTION
# Remedies whose benefit only shows late in a run, so a short screen cannot judge them.
LATE_EFFECT = {
    "dropout",
    "weight_decay",
    "early_stopping",
    "data_augmentation",
    "less_capacity",
    "train_longer",
}
# Remedies that are the same fix as their partner: a switch to ReLU comes with He init.
PAIRED = {"relu_activation": "he_init", "leaky_relu_activation": "he_init"}


@dataclass
class Trial:
    """One remedy set trained once; ``kept`` says whether it survived verification."""

    remedies: list[str]
    stage: str  # screen | combine | verify
    steps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    score: float = math.nan
    baseline_score: float = math.nan
    passed: bool = False
    kept: bool = False
    error: str | None = None
    prescription: str | None = None
    note: str | None = None  # what the trial taught the search (e.g. the playbook's rule)
    clipped_fraction: float = math.nan  # of the steps, when the trial clipped gradients
    # A full-length screen (treated experiment, its probed run): already a verification.
    full_run: tuple[Experiment, Any] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        def clean(v: float) -> float | None:
            return v if isinstance(v, float) and math.isfinite(v) else None

        return {
            "remedies": self.remedies,
            "stage": self.stage,
            "steps": self.steps,
            "metrics": {k: clean(v) for k, v in self.metrics.items()},
            "score": clean(self.score),
            "baseline_score": clean(self.baseline_score),
            "passed": self.passed,
            "kept": self.kept,
            "error": self.error,
            "prescription": self.prescription,
            "note": self.note,
        }


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
    # The treated run's Diagnosis (its trace included), the baseline of a next round.
    diagnosis_after: Any = field(default=None, repr=False, compare=False)

    @property
    def prescriptions(self) -> list[Trial]:
        return [t for t in self.trials if t.prescription]

    def snippet(self) -> str:
        """Python lines that make the applied changes by hand in the user's own code."""
        lines = [f"# deepdoctor treat: {', '.join(self.applied) or 'no change'}"]
        for change in self.treated.meta.get("changes", []):
            lines.append(f"# {change['remedy']}")
            lines.append(change["code"])
        return "\n".join(lines) + "\n"

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


# -- scoring --------------------------------------------------------------------------------


def metrics_of(history: History) -> dict[str, float]:
    """The metrics of the model a run returns (see ``History.final``)."""
    final = history.final
    return {
        k: float(final[k])
        for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
        if k in final
    }


def score_of(metrics: dict[str, float]) -> float:
    """Higher is better: validation accuracy where it exists, else minus the loss."""
    for key in ("val_accuracy", "train_accuracy"):
        v = metrics.get(key, math.nan)
        if math.isfinite(v):
            loss = metrics.get("val_loss", metrics.get("train_loss", math.nan))
            return v if math.isfinite(loss) else -math.inf
    loss = metrics.get("val_loss", metrics.get("train_loss", math.nan))
    return -loss if math.isfinite(loss) else -math.inf


def score_at(history: History, step: int) -> float:
    """The score of the evaluation at ``step`` (or the last one before it)."""
    chosen: dict[str, float] | None = None
    for e in history.evals:
        if e["step"] <= step:
            chosen = e
    return score_of(chosen) if chosen else -math.inf


def stop_if_interrupted(history: History) -> History:
    """The training loop turns Ctrl-C into a clean stop of that one run; treat stops too."""
    if history.stopped == "interrupted":
        raise KeyboardInterrupt
    return history


def rank(trial: Trial) -> tuple[float, int]:
    """The larger gain first; on a tie, fewer changes."""
    return trial.score, -len(trial.remedies)


def uses_accuracy(metrics: dict[str, float]) -> bool:
    return any(math.isfinite(metrics.get(k, math.nan)) for k in ("val_accuracy", "train_accuracy"))


# -- the search -----------------------------------------------------------------------------


def _check_deterministic(exp: Experiment) -> None:
    a, b = exp.build().state_dict(), exp.build().state_dict()
    if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
        raise ValueError(
            f"the model builder of {exp.name!r} is not deterministic under a seed: two builds "
            "after torch.manual_seed(seed) gave different weights, so runs cannot be compared. "
            "Draw every random number from torch's global generator (no time-based seeds, "
            "no numpy/random without seeding)"
        )


def _context(exp: Experiment, trace: Any, findings: list[Finding]) -> Context:
    X, _ = loader_tensors(exp.train, 8)
    updates = trace.updates.array("update_ratio") if len(trace.updates) else np.zeros((0, 0))
    finite = updates[np.isfinite(updates)]
    lr = trace.steps.array("lr")[:, 0] if trace.n_steps else np.array([math.nan])
    base_lr = float(lr[0]) if lr.size and math.isfinite(lr[0]) else 0.1
    counts = None
    if not is_loader(exp.train):
        y = exp.train[1]
        if not y.is_floating_point():
            counts = torch.bincount(y).tolist()
    return Context(
        example=X,
        base_lr=base_lr,
        grad_norms=trace.steps.array("grad_norm_total")[:, 0] if trace.n_steps else np.zeros(0),
        update_ratio=float(np.median(finite)) if finite.size else math.nan,
        kinds={f.kind for f in findings if f.is_problem},
        class_counts=counts,
    )


def candidate_remedies(findings: list[Finding]) -> list[list[str]]:
    """Remedy sets to screen, from the findings' remedies, most severe finding first."""
    seen: list[list[str]] = []
    for f in sort_findings([f for f in findings if f.is_problem]):
        for name in f.remedies:
            group = [name] + ([PAIRED[name]] if name in PAIRED else [])
            if group not in seen and all(n in REMEDIES for n in group):
                seen.append(group)
    return seen


def treat(
    experiment: Experiment,
    budget: float | None = None,
    seed: int | None = None,
    *,
    remedies: list[str] | None = None,
    progress: bool = False,
) -> Treatment:
    """Diagnose ``experiment``, try the remedies its findings name, keep what is verified.

    budget: compute treat may spend, in runs of the untreated experiment (default 3).
    seed: overrides the experiment's seed for every run. remedies: screen these (in this
    order) instead of the ones the diagnosis names.

    Greedy rounds: when a remedy was verified and the budget still holds a noise run, a
    screen and a verification, the treated experiment is treated again, its verified run
    the new baseline, for the findings that remain (at most ``MAX_ROUNDS`` rounds).

    >>> tr = treat(get_preset("sigmoid-mlp50-digits"))   # doctest: +SKIP
    >>> tr.applied, tr.before["val_accuracy"], tr.after["val_accuracy"]  # doctest: +SKIP
    """
    tr = _treat_round(experiment, budget, seed, remedies=remedies, progress=progress)
    total = DEFAULT_BUDGET if budget is None else float(budget)
    while (
        tr.applied
        and not tr.interrupted
        and tr.rounds < MAX_ROUNDS
        and remedies is None
        and total - tr.compute >= NEXT_ROUND_MINIMUM
    ):
        nxt = _treat_round(
            tr.treated,
            total - tr.compute,
            None,
            progress=progress,
            baseline=tr.diagnosis_after,
            exclude=tr.applied,
        )
        for t in nxt.trials:
            t.stage = f"{t.stage} (round {tr.rounds + 1})"
        tr.trials += nxt.trials
        tr.compute = round(tr.compute + nxt.compute, 3)
        tr.rounds += 1
        if not nxt.applied:
            tr.message += f"; round {tr.rounds}: {nxt.message}"
            break
        tr.applied = tr.applied + nxt.applied
        tr.after, tr.model, tr.findings = nxt.after, nxt.model, nxt.findings
        tr.treated, tr.history_after = nxt.treated, nxt.history_after
        tr.diagnosis_after, tr.interrupted = nxt.diagnosis_after, nxt.interrupted
        tr.message += f"; round {tr.rounds}: {nxt.message}"
    return tr


def _treat_round(
    experiment: Experiment,
    budget: float | None = None,
    seed: int | None = None,
    *,
    remedies: list[str] | None = None,
    progress: bool = False,
    baseline: Any = None,
    exclude: list[str] | None = None,
) -> Treatment:
    """One round of treat; ``baseline`` a Diagnosis of ``experiment`` already run (then it
    costs nothing here), ``exclude`` remedies already applied (and those conflicting)."""
    from .diagnose import diagnose_experiment

    if not isinstance(experiment, Experiment):
        raise TypeError(f"treat needs a deepdoctor.Experiment, got {type(experiment).__name__}")
    budget = DEFAULT_BUDGET if budget is None else check_number("budget", budget)
    if budget < 1.0:
        raise ValueError(
            f"budget {budget} is too small to run even the untreated baseline: the minimum is "
            f"1.0 (one run of {experiment.steps} steps); at least "
            f"{2 + 2 * SCREEN_FRACTION:.1f} lets treat screen and verify one remedy"
        )
    exp = experiment if seed is None else experiment.replace(seed=seed)
    if exp.eval_every is None:
        # Evaluations on a fine grid let screened candidates be compared at the same step.
        exp = exp.replace(eval_every=max(1, round(exp.steps * SCREEN_FRACTION / 2)))
    _check_deterministic(exp)
    screen_steps = max(1, round(exp.steps * SCREEN_FRACTION))
    trials: list[Trial] = []
    spent = 0.0
    started = time.time()

    if baseline is not None:
        base = baseline
    else:
        base = diagnose_experiment(exp, progress="baseline" if progress else False)
        spent += base.history.steps / exp.steps
    before = metrics_of(base.history)
    base_score = score_of(before)
    candidates = (
        [[r] for r in remedies] if remedies is not None else candidate_remedies(base.findings)
    )
    if exclude:
        candidates = [
            g for g in candidates if not set(g) & set(exclude) and compatible([*g, *exclude])
        ]

    def result(
        applied: list[str], treated: Experiment, run: Any, message: str, interrupted: bool = False
    ) -> Treatment:
        return Treatment(
            applied=applied,
            before=before,
            after=metrics_of(run.history),
            trials=trials,
            model=run.model,
            findings=run.findings,
            findings_before=base.findings,
            noise=noise,
            compute=round(spent, 3),
            message=message,
            experiment=exp,
            treated=treated,
            history_before=base.history,
            history_after=run.history,
            interrupted=interrupted,
            diagnosis_after=run,
        )

    noise = math.nan
    if not candidates:
        which = "treated" if baseline is not None else "untreated"
        msg = (
            f"the {which} run is healthy: no remedy applied"
            if base.healthy
            else "the findings name no remedy that can be applied automatically"
        )
        return result([], exp, base, msg)
    if base.history.stopped == "interrupted":
        return result([], exp, base, "interrupted during the untreated run", interrupted=True)

    blew_up = [
        int(f.evidence["step"])
        for f in base.findings
        if f.kind == "diverging_loss" and isinstance(f.evidence.get("step"), int)
    ]
    if base.stopped_at is not None:
        blew_up.append(base.stopped_at)
    if blew_up and min(blew_up) >= screen_steps:
        # The untreated run blew up after the screening point: a screen that ends before
        # the blow-up compares candidates with a run that still looked fine. Screen past it.
        screen_steps = min(exp.steps, min(blew_up) + max(1, round(exp.steps * 0.05)))
    ctx = _context(exp, base.trace, base.findings)
    try:
        # Seed-to-seed noise at the screening point.
        if spent + screen_steps / exp.steps <= budget:
            other = stop_if_interrupted(exp.run(steps=screen_steps, seed=exp.seed + 1))
            spent += other.steps / exp.steps
            noise = abs(score_at(base.history, screen_steps) - score_of(metrics_of(other)))
        min_gain = MIN_GAIN_ACCURACY if uses_accuracy(before) else MIN_GAIN_LOSS * abs(base_score)
        margin = max(min_gain, noise if math.isfinite(noise) else 0.0)

        passed: list[Trial] = []
        queue = list(candidates)
        with progress_bar(min(len(queue), MAX_CANDIDATES), "screening", enabled=progress) as bar:
            screened = 0
            while queue and screened < MAX_CANDIDATES:
                group = queue.pop(0)
                trial = _screen(exp, group, ctx, screen_steps, base.history, margin, budget - spent)
                screened += 1
                spent += trial.steps / exp.steps
                trials.append(trial)
                if trial.passed:
                    passed.append(trial)
                if trial.clipped_fraction > CLIP_MOST_STEPS:
                    # The playbook's rule: clipping most steps means the rate is too high.
                    trial.note = (
                        f"clipping fired on {trial.clipped_fraction:.0%} of the steps: by the "
                        "Tuning Playbook's rule the learning rate is too high, so lower_lr is "
                        "screened next"
                    )
                    queue = [["lower_lr"]] + [g for g in queue if g != ["lower_lr"]]
                bar.advance()
        for group in queue:
            trials.append(Trial(group, "screen", error="not tried: MAX_CANDIDATES reached"))

        best_pair = sorted(passed, key=rank, reverse=True)[:2]
        if len(best_pair) == 2:
            combo = sorted(set(best_pair[0].remedies) | set(best_pair[1].remedies))
            if compatible(combo):
                trial = _screen(
                    exp,
                    combo,
                    ctx,
                    screen_steps,
                    base.history,
                    margin,
                    budget - spent,
                    stage="combine",
                )
                spent += trial.steps / exp.steps
                trials.append(trial)
                if trial.passed:
                    passed.append(trial)
        if not passed:
            return result(
                [],
                exp,
                base,
                "no remedy beat the untreated run by more than the "
                f"noise margin ({margin:.3g}); nothing applied",
            )

        def applied(remedies: list[str], score: float) -> str:
            return (
                f"applied {' + '.join(remedies)}: score {base_score:.3g} -> {score:.3g} "
                f"(+{score - base_score:.3g}, noise margin {margin:.3g}) in "
                f"{time.time() - started:.0f} s"
            )

        best = max(passed, key=rank)
        verified = [t for t in passed if t.full_run is not None]
        if best.full_run is None and spent + 1.0 > budget + 1e-9 and verified:
            best = max(verified, key=rank)
        if best.full_run is not None:
            best.kept = True
            treated, run = best.full_run
            return result(best.remedies, treated, run, applied(best.remedies, best.score))
        if spent + 1.0 > budget + 1e-9:
            return result(
                [],
                exp,
                base,
                f"budget {budget} spent before verification; "
                f"best screened: {'+'.join(best.remedies)}",
            )
        treated = apply_remedies(exp, best.remedies, ctx)
        run = diagnose_experiment(treated, progress="verifying" if progress else False)
        stop_if_interrupted(run.history)
        spent += run.history.steps / exp.steps
        verify = Trial(
            best.remedies,
            "verify",
            steps=run.history.steps,
            metrics=metrics_of(run.history),
            baseline_score=base_score,
        )
        verify.score = score_of(verify.metrics)
        verify.passed = verify.kept = verify.score > base_score + margin
        trials.append(verify)
        if not verify.kept:
            return result(
                [],
                exp,
                base,
                f"{'+'.join(best.remedies)} passed screening but "
                f"did not beat the untreated run over the full budget "
                f"({verify.score:.3g} vs {base_score:.3g}, margin {margin:.3g})",
            )
        best.kept = True
        return result(best.remedies, treated, run, applied(best.remedies, verify.score))
    except KeyboardInterrupt:
        verified = [t for t in trials if t.passed and t.full_run is not None]
        if not verified:
            return result(
                [], exp, base, "interrupted: returning the untreated run", interrupted=True
            )
        best = max(verified, key=rank)
        best.kept = True
        assert best.full_run is not None  # filtered above
        treated, run = best.full_run
        return result(
            best.remedies,
            treated,
            run,
            f"interrupted: keeping {' + '.join(best.remedies)}, verified over the full run "
            f"(score {base_score:.3g} -> {best.score:.3g})",
            interrupted=True,
        )


def _screen(
    exp: Experiment,
    group: list[str],
    ctx: Context,
    screen_steps: int,
    baseline: History,
    margin: float,
    room: float,
    stage: str = "screen",
) -> Trial:
    """Screen one remedy set; ``room`` is the budget left, in runs."""
    from .diagnose import diagnose_experiment

    trial = Trial(list(group), stage)
    try:
        candidate = apply_remedies(exp, group, ctx)
    except Prescription as p:
        trial.prescription = p.instructions
        return trial
    except Exception as exc:  # a remedy that throws is recorded, and the search goes on
        trial.error = f"{type(exc).__name__}: {exc}"
        return trial
    late = any(r in LATE_EFFECT for r in group)
    steps = candidate.steps if late else screen_steps
    # A short screen leaves room for its verification run; a full-length one is its own.
    if steps / exp.steps + (0.0 if late else 1.0) > room + 1e-9:
        trial.error = "not tried: budget"
        return trial
    try:
        if late:
            run = diagnose_experiment(candidate)
            history = run.history
            trial.full_run = (candidate, run)
        else:
            history = candidate.run(steps=steps)
    except Exception as exc:
        trial.error = f"{type(exc).__name__}: {exc}"
        return trial
    stop_if_interrupted(history)
    if history.clipped:
        trial.clipped_fraction = float(np.mean(history.clipped))
    trial.steps = history.steps
    trial.metrics = metrics_of(history)
    trial.score = score_of(trial.metrics)
    trial.baseline_score = score_at(baseline, steps)
    trial.passed = trial.score > trial.baseline_score + margin
    return trial

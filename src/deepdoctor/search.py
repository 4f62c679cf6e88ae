"""The repair search behind ``treat``: a budget ledger, trials with a status, greedy rounds.

``deepdoctor.treat``'s docstring says what the search does and why; this module is that
search as code, top to bottom: the ledger every run is charged to, a trial, the search over
rounds, one round (baseline, noise, screening, combination, verification), and the scores
the decisions compare.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from .experiment import Experiment
from .findings import Finding, sort_findings
from .progress import progress_bar
from .remedies import REMEDIES, Context, apply_remedies, compatible
from .remedies.lr_range import sharing_sweeps
from .remedies.optimization import is_adaptive
from .scoring import Scoring, metrics_of, needs_another_seed, noise_margin, scoring_for
from .training import History, is_loader, loader_tensors
from .trials import STUCK_STOP, GiveUpWhenStuck, TrialEngine, TrialResult, TrialSpec

__all__ = ["Ledger", "Search", "Trial", "metrics_of"]

DEFAULT_BUDGET = 3.0  # baseline runs; AUTOTRAINER reports 2.21x for its repairs
SCREEN_FRACTION = 0.2  # of the steps: enough for trainability fixes to separate from chance
MAX_CANDIDATES = 6  # remedy sets screened at most in a round; the rest are not tried
# The Deep Learning Tuning Playbook: clipping on more than half the steps is a sign that the
# learning rate is too high, and lowering it is the better fix; treat then screens lower_lr.
CLIP_MOST_STEPS = 0.5
MAX_ROUNDS = 3  # greedy rounds: treat the treated experiment for what remains
# A next round needs its noise run, one screen and one verification (in runs of its own).
NEXT_ROUND_MINIMUM = 1.0 + 2 * SCREEN_FRACTION
# lower_lr's rate is cut tenfold again, at most this often, while its screen still blows up
# (the range test's rate 0.07 where 0.01 trains: a sweep of 50 steps underrates a momentum
# whose average spans 100).
MAX_RATE_CUTS = 2
# Findings of a run that diverged: lower_lr, already applied, may be screened again.
DIVERGED = {"diverging_loss", "nonfinite"}
# A run blew up when the median loss of its last 1/BLOWUP_TAIL of steps is above its first.
BLOWUP_TAIL = 10
# A screen that must run past a late blow-up to more than this fraction of the steps is run
# to the end instead: probed, it is its own verification, where a screen of 0.9 runs and then
# a verification of 1 would not fit a budget of 3 beside the baseline and a noise run.
FULL_SCREEN_ABOVE = 0.5
# The third noise seed runs only when this many screens and a verification still fit after it.
SCREENS_AFTER_NOISE = 3
# Past the step where the untreated run blew up, a screen runs this fraction further.
PAST_BLOWUP = 0.05
# Sums of step fractions carry float rounding: a run that fits exactly is not refused.
SLACK = 1e-9
# Remedies whose benefit only shows late in a run, so a short screen cannot judge them.
LATE_EFFECT = {
    "dropout",
    "weight_decay",
    "early_stopping",
    "data_augmentation",
    "less_capacity",
    "train_longer",
}
# Problems of the data, upstream of every layer: every statistic the other findings read
# (saturation, dead units, gradients) is measured on these inputs, so their remedies come
# first after the named root causes (raw MNIST-1D into a sigmoid MLP: the saturation
# remedies used the budget and standardize_inputs was never screened).
UPSTREAM = {"unscaled_inputs"}
# Remedies whose screens start slowly by design: never given up on half way.
SLOW_START = {"lower_lr", "lr_warmup"}
# Remedies that are the same fix as their partner: a switch to ReLU comes with He init.
PAIRED = {"relu_activation": "he_init", "leaky_relu_activation": "he_init"}


# -- the ledger -----------------------------------------------------------------------------


class BudgetError(RuntimeError):
    """A run was charged that the budget left cannot pay for: a bug in the search."""


@dataclass
class Ledger:
    """Compute in runs of the untreated experiment: the budget, what is spent, what is left.

    The search asks ``fits`` before it starts a run and ``charge``s the steps the run took
    once it ended (a run that blew up stops early and costs less); a charge that does not
    fit is refused.
    """

    budget: float
    run_steps: int  # optimizer steps of one untreated run
    spent: float = 0.0

    @property
    def left(self) -> float:
        return self.budget - self.spent

    @property
    def compute(self) -> float:
        """What was spent, as reported: in runs, to a thousandth."""
        return round(self.spent, 3)

    def runs(self, steps: int) -> float:
        return steps / self.run_steps

    def fits(self, runs: float) -> bool:
        return runs <= self.left + SLACK

    def shortfall(self, runs: float, what: str) -> str:
        """Why a run that does not fit was not started, in words."""
        return f"the budget left ({_runs(self.left)}) is less than {what} ({_runs(runs)})"

    def charge(self, what: str, steps: int) -> None:
        runs = self.runs(steps)
        if not self.fits(runs):
            raise BudgetError(f"{what}: {self.shortfall(runs, 'it cost')}")
        self.spent += runs

    def absorb(self, steps: int) -> None:
        """Count compute already spent that no check could refuse in advance: the short runs
        a remedy makes while it is applied (the learning-rate range test)."""
        self.spent += self.runs(steps)


def _runs(n: float) -> str:
    return f"{n:.3g} run" if f"{n:.3g}" == "1" else f"{n:.3g} runs"


# -- a trial --------------------------------------------------------------------------------

# kept: verified (or a full-length screen that is its own verification) and applied;
# passed: beat the baseline at the screen but was not kept; no_gain: ran, did not beat it;
# not_tried: never ran (``reason`` says why); error: the remedy or its run threw (``error``);
# prescription: cannot be applied automatically (``prescription`` says what to do by hand).
Status = Literal["kept", "passed", "no_gain", "not_tried", "error", "prescription"]
STATUSES: tuple[Status, ...] = ("kept", "passed", "no_gain", "not_tried", "error", "prescription")


@dataclass
class Trial:
    """One remedy set, screened or verified once in a round; ``status`` says what became of it."""

    remedies: list[str]
    stage: str  # screen | combine | verify
    status: Status
    round: int = 1
    steps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    score: float = math.nan
    baseline_score: float = math.nan
    reason: str | None = None  # not_tried: why, in words
    error: str | None = None  # error: the exception
    prescription: str | None = None  # prescription: what to change by hand
    note: str | None = None  # what the trial taught the search (e.g. the playbook's rule)
    clipped_fraction: float = math.nan  # of the steps, when the trial clipped gradients
    cached: bool = False  # its run came from the trial cache of an earlier, interrupted treat
    # Its training loss ended above where it started, or not finite: the run blew up.
    blew_up: bool = False
    # A full-length screen (treated experiment, its probed run): already a verification.
    full_run: tuple[Experiment, Any] | None = field(default=None, repr=False, compare=False)
    # The treated experiment as screened, so verification reuses it rather than applying
    # the remedies again (which would repeat a range test).
    candidate: Experiment | None = field(default=None, repr=False, compare=False)

    @property
    def passed(self) -> bool:
        """Beat the baseline by more than the noise margin."""
        return self.status in ("passed", "kept")

    @property
    def kept(self) -> bool:
        return self.status == "kept"

    def to_dict(self) -> dict[str, Any]:
        def clean(v: float) -> float | None:
            return v if isinstance(v, float) and math.isfinite(v) else None

        return {
            "remedies": self.remedies,
            "stage": self.stage,
            "round": self.round,
            "status": self.status,
            "reason": self.reason,
            "steps": self.steps,
            "metrics": {k: clean(v) for k, v in self.metrics.items()},
            "score": clean(self.score),
            "baseline_score": clean(self.baseline_score),
            "passed": self.passed,
            "kept": self.kept,
            "error": self.error,
            "prescription": self.prescription,
            "note": self.note,
            "cached": self.cached,
        }


@dataclass
class Outcome:
    """What a round decided: the remedies it kept (none, or a set), on which run, and why."""

    applied: list[str]
    treated: Experiment
    run: Any  # the Diagnosis of ``treated``: the verified run, or the round's baseline
    message: str
    interrupted: bool = False


# -- the search -----------------------------------------------------------------------------


class Search:
    """One treat: the ledger, the trials, and the greedy rounds.

    A round that kept a remedy is followed by another on the treated experiment, its verified
    run the new baseline, for the findings that remain, while the ledger holds what a round
    needs (at most ``MAX_ROUNDS``; not when ``remedies`` fixes what is screened).
    """

    def __init__(
        self,
        experiment: Experiment,
        budget: float,
        remedies: list[str] | None = None,
        progress: bool = False,
        engine: TrialEngine | None = None,
    ) -> None:
        self.experiment = experiment
        # Where trials run (in-process, worker processes, Ray) and their cache: the search
        # decides the same wherever they run.
        self.engine = engine or TrialEngine(experiment)
        self.ledger = Ledger(budget, experiment.steps)
        self.remedies = remedies
        self.progress = progress
        self.trials: list[Trial] = []
        self.rounds: list[Round] = []
        self.outcomes: list[Outcome] = []
        self.swept: set[str] = set()  # range tests charged, by sweep key

    def run(self) -> Search:
        # lower_lr, raise_lr and lr_warmup on one experiment read one range test
        with sharing_sweeps():
            return self._rounds()

    def _rounds(self) -> Search:
        exp, baseline = self.experiment, None
        while True:
            rnd = Round(self, exp, len(self.rounds) + 1, baseline)
            self.rounds.append(rnd)
            outcome = rnd.run()
            self.outcomes.append(outcome)
            if not self._another_round(outcome):
                return self
            exp, baseline = outcome.treated, outcome.run

    def _another_round(self, outcome: Outcome) -> bool:
        return (
            bool(outcome.applied)
            and not outcome.interrupted
            and len(self.rounds) < MAX_ROUNDS
            and self.remedies is None
            and self.ledger.fits(NEXT_ROUND_MINIMUM * self.ledger.runs(outcome.treated.steps))
        )

    @property
    def applied(self) -> list[str]:
        return [name for o in self.outcomes for name in o.applied]

    def remedy_charge(self, result: TrialResult) -> int:
        """The steps a trial's remedies spent that the ledger has not yet been charged: a range
        test that an earlier trial of this search already paid for counts once."""
        sweeps = getattr(result, "sweeps", {})  # a trial cached by an older version has none
        paid = sum(steps for key, steps in sweeps.items() if key in self.swept)
        self.swept |= set(sweeps)
        return result.remedy_steps - paid

    @property
    def final(self) -> Outcome:
        """The last round that kept a remedy, else the first: its run is the treated one."""
        kept = [o for o in self.outcomes if o.applied]
        return kept[-1] if kept else self.outcomes[0]

    @property
    def interrupted(self) -> bool:
        return any(o.interrupted for o in self.outcomes)

    @property
    def message(self) -> str:
        first, *later = self.outcomes
        return first.message + "".join(
            f"; round {n}: {o.message}" for n, o in enumerate(later, start=2)
        )


class Round:
    """One round: a baseline, the noise margin, the screens, a combination, a verification."""

    def __init__(self, search: Search, experiment: Experiment, number: int, baseline: Any) -> None:
        exp = experiment
        if exp.eval_every is None:
            # Evaluations on a fine grid let screened candidates be compared at the same step.
            exp = exp.replace(eval_every=max(1, round(exp.steps * SCREEN_FRACTION / 2)))
        _check_deterministic(exp)
        self.exp = exp
        self.number = number
        self.search = search
        self.ledger = search.ledger
        self.exclude = search.applied
        self.progress = search.progress
        self.engine = search.engine
        self.one_run = self.ledger.runs(exp.steps)  # this round's run, in untreated runs
        self.started = time.time()
        self.base: Any = baseline  # a Diagnosis; round 1 runs its own
        self.noise = math.nan  # the robust spread of the screen's score over seeds
        self.noise_samples: list[float] = []  # the screen's score at each seed
        self.margin = 0.0
        self.passed: list[Trial] = []
        self.scoring: Scoring = scoring_for(exp)

    def run(self) -> Outcome:
        if self.base is None:
            self.base = self._diagnose(self.exp, "baseline")
        self.before = metrics_of(self.base.history)
        self.base_score = self.scoring.of(self.before)
        candidates = self._candidates()
        if not candidates:
            which = "treated" if self.number > 1 else "untreated"
            healthy = f"the {which} run is healthy: no remedy applied"
            no_remedy = "the findings name no remedy that can be applied automatically"
            return self._nothing(healthy if self.base.healthy else no_remedy)
        if self.base.history.stopped == "interrupted":
            return self._nothing("interrupted during the untreated run", interrupted=True)
        self.screen_steps = self._screening_point()
        self.full_screens = self.screen_steps > FULL_SCREEN_ABOVE * self.exp.steps
        self.ctx = _context(self.exp, self.base.trace, self.base.findings)
        self.rate_cuts = 0  # lower_lr's further tenfold cuts, after its rate still blew up
        try:
            self._prefetch(candidates)
            self._measure_noise()
            self._screen_candidates(candidates)
            self._screen_combination()
            return self._decide()
        except KeyboardInterrupt:
            return self._interrupted()

    # -- the steps of a round, in order ---------------------------------------------------

    def _diagnose(self, exp: Experiment, label: str) -> Any:
        progress = label if self.progress else False
        spec = TrialSpec(exp, probed=True, progress=progress, catch=False)
        run = self.engine.result(spec).diagnosis
        self.ledger.charge(label, run.history.steps)
        return run

    def _candidates(self) -> list[list[str]]:
        remedies = self.search.remedies
        candidates = (
            [[r] for r in remedies]
            if remedies is not None
            else _with_rate(candidate_remedies(self.base.findings), self.base.findings, self.exp)
        )
        if not self.exclude:
            return candidates
        # A rate lowered in an earlier round whose treated run still diverges is lowered again
        # (its range test now starts from the lowered rate): the next rate down.
        again = set(self.exclude) & {"lower_lr"} if self._still_diverging() else set()
        done = set(self.exclude) - again
        return [g for g in candidates if not set(g) & done and compatible([*g, *done])]

    def _still_diverging(self) -> bool:
        return any(f.kind in DIVERGED and f.is_problem for f in self.base.findings)

    def _screening_point(self) -> int:
        """``SCREEN_FRACTION`` of the steps, or just past the step where the baseline blew up:
        a screen that ends before the blow-up compares with a run that still looked fine."""
        steps = self.exp.steps
        screen_steps = max(1, round(steps * SCREEN_FRACTION))
        blew_up = [
            int(f.evidence["step"])
            for f in self.base.findings
            if f.kind == "diverging_loss" and isinstance(f.evidence.get("step"), int)
        ]
        if self.base.stopped_at is not None:
            blew_up.append(self.base.stopped_at)
        if blew_up and min(blew_up) >= screen_steps:
            return min(steps, min(blew_up) + max(1, round(steps * PAST_BLOWUP)))
        return screen_steps

    def _measure_noise(self) -> None:
        """The baseline again from the next seed, to the screening point, and from one more
        when the two disagree: the robust spread of the screen's score over the seeds sets
        the noise margin a candidate must beat (``scoring.noise_margin``)."""
        min_gain = self.scoring.min_gain(self.base_score)
        self.noise_samples = [self.scoring.at(self.base.history, self.screen_steps)]
        if self.full_screens:
            # A noise run as long as a screen would cost most of a run; the trivial
            # predictor's bar and the minimum gain guard the full-length screens instead.
            self.margin, self.noise = min_gain, math.nan
            return
        screen = self.ledger.runs(self.screen_steps)
        for offset in (1, 2):
            if offset == 2 and not (
                needs_another_seed(self.noise_samples, min_gain)
                # a third seed only while it leaves room to screen and verify: otherwise
                # the margin would be robust and nothing left to judge with it
                and self.ledger.fits(screen * (1 + SCREENS_AFTER_NOISE) + self.one_run)
            ):
                break
            if not self.ledger.fits(screen):
                break
            other = self.engine.result(self._noise_spec(offset)).history
            assert other is not None  # catch=False: a run that failed raised
            self.ledger.charge("noise run", other.steps)
            stop_if_interrupted(other)
            self.noise_samples.append(self.scoring.of(metrics_of(other)))
        self.margin, self.noise = noise_margin(self.noise_samples, min_gain)

    def _screen_candidates(self, candidates: list[list[str]]) -> None:
        queue = list(candidates)
        with progress_bar(
            min(len(queue), MAX_CANDIDATES), "screening", enabled=self.progress
        ) as bar:
            screened_groups: list[list[str]] = []
            while queue and len(screened_groups) < MAX_CANDIDATES:
                group = queue.pop(0)
                trial = self._screen(group, "screen")
                screened_groups.append(group)
                if self._blew_up_again(group, trial):
                    # The rate the range test chose still blew up: the next rate down.
                    self.rate_cuts += 1
                    again = (
                        "the run still blew up at this rate: lower_lr is screened next at a tenth"
                    )
                    trial.note = f"{trial.note}; {again}" if trial.note else again
                    queue.insert(0, group)
                    bar.advance()
                    continue
                if trial.clipped_fraction > CLIP_MOST_STEPS and ["lower_lr"] not in screened_groups:
                    # The playbook's rule: clipping most steps means the rate is too high; a
                    # rate already screened is not screened again.
                    trial.note = (
                        f"clipping fired on {trial.clipped_fraction:.0%} of the steps: by the "
                        "Tuning Playbook's rule the learning rate is too high, so lower_lr is "
                        "screened next"
                    )
                    queue = [["lower_lr"]] + [g for g in queue if g != ["lower_lr"]]
                bar.advance()
        reason = f"treat screens at most {MAX_CANDIDATES} remedy sets a round, best-ranked first"
        for group in queue:
            self._record(Trial(group, "screen", "not_tried", self.number, reason=reason))
        self._last_chance()

    def _last_chance(self) -> None:
        """Nothing passed, and the run kept for a verification is still unspent: rather than
        leave it idle, screen the best-ranked candidate the budget left out over the full
        run (probed, so it is its own verification), in place of its "not tried"."""
        if self.passed or self.full_screens:
            return
        for trial in list(self.search.trials):
            left_out = (
                trial.round == self.number
                and trial.stage == "screen"
                and trial.status == "not_tried"
                and not any(r in LATE_EFFECT for r in trial.remedies)
            )
            if left_out and not self._shortfall(True, self._most_steps(trial.remedies, True)):
                self.search.trials.remove(trial)
                self._screen(trial.remedies, "screen", full=True)
                return

    def _screen_combination(self) -> None:
        """When two compatible remedies both passed screening, screen them together."""
        best_pair = sorted(self.passed, key=rank, reverse=True)[:2]
        if len(best_pair) == 2:
            combo = sorted(set(best_pair[0].remedies) | set(best_pair[1].remedies))
            # a combination adds something to each of the pair (not a set screened twice)
            new = all(len(combo) > len(set(t.remedies)) for t in best_pair)
            if new and compatible(combo):
                self._screen(combo, "combine")

    def _decide(self) -> Outcome:
        """Keep the best screened candidate once verified over the full run; a full-length
        screen already is that run, and is preferred when a verification no longer fits."""
        if not self.passed:
            return self._nothing(
                "no remedy beat the untreated run by more than the "
                f"noise margin ({self.margin:.3g}); nothing applied"
            )
        best = max(self.passed, key=rank)
        verified = [t for t in self.passed if t.full_run is not None]
        if best.full_run is None and not self.ledger.fits(self.one_run) and verified:
            best = max(verified, key=rank)
        if best.full_run is not None:
            best.status = "kept"
            treated, run = best.full_run
            return Outcome(best.remedies, treated, run, self._applied(best.remedies, best.score))
        if not self.ledger.fits(self.one_run):
            return self._nothing(
                f"budget {self.ledger.budget} spent before verification; "
                f"best screened: {'+'.join(best.remedies)}"
            )
        return self._verify(best)

    def _verify(self, best: Trial) -> Outcome:
        # The remedies' own steps were charged when they were screened; a screen served from
        # the trial cache has no candidate, and the remedies are applied again here.
        treated = best.candidate or apply_remedies(
            self.exp, best.remedies, self._context_for(best.remedies)
        )
        run = self._diagnose(treated, "verifying")
        stop_if_interrupted(run.history)
        metrics = metrics_of(run.history)
        score = self.scoring.of(metrics)
        why_not = self._why_not(score, self.base_score, run.findings)
        self._record(
            Trial(
                best.remedies,
                "verify",
                "no_gain" if why_not else "kept",
                self.number,
                steps=run.history.steps,
                metrics=metrics,
                score=score,
                baseline_score=self.base_score,
                note=why_not,
            )
        )
        if why_not:
            return self._nothing(
                f"{'+'.join(best.remedies)} passed screening but not the full run: {why_not}"
            )
        best.status = "kept"
        return Outcome(best.remedies, treated, run, self._applied(best.remedies, score))

    def _interrupted(self) -> Outcome:
        """Ctrl-C: keep the best candidate already verified over the full run, if any."""
        verified = [t for t in self.passed if t.full_run is not None]
        if not verified:
            which = "treated" if self.number > 1 else "untreated"
            return self._nothing(f"interrupted: returning the {which} run", interrupted=True)
        best = max(verified, key=rank)
        best.status = "kept"
        assert best.full_run is not None  # filtered above
        treated, run = best.full_run
        return Outcome(
            best.remedies,
            treated,
            run,
            f"interrupted: keeping {' + '.join(best.remedies)}, verified over the full run "
            f"(score {_score(self.base_score, self.scoring)} -> "
            f"{_score(best.score, self.scoring)})",
            interrupted=True,
        )

    # -- screening one remedy set ---------------------------------------------------------

    def _screen(self, group: list[str], stage: str, full: bool = False) -> Trial:
        """Screen one remedy set against the baseline at the same step, and record it;
        ``full``: over the full run, probed (its own verification)."""
        trial = self._screen_trial(group, stage, full)
        self._record(trial)
        if trial.passed:
            self.passed.append(trial)
        return trial

    def _screen_trial(self, group: list[str], stage: str, full: bool = False) -> Trial:
        def trial(status: Status, **fields: Any) -> Trial:
            return Trial(list(group), stage, status, self.number, **fields)

        late = self.full_screens or any(r in LATE_EFFECT for r in group)
        last_chance = None
        # Checked before the remedies are applied (some spend compute while being applied,
        # e.g. a range test) and again after, with what they spent and the steps they set.
        if full and not late:
            late = True
            last_chance = (
                "screened over the full run: no short screen and its verification fit any "
                "more and nothing had passed, so the run kept for a verification went to this "
                "candidate's full-length screen, its own verification"
            )
        short = self._shortfall(late, self._most_steps(group, late))
        if short:
            return trial("not_tried", reason=short)
        result = self.engine.result(self._screen_spec(group, late))
        self.ledger.absorb(self.search.remedy_charge(result))
        if result.status == "prescription":
            return trial("prescription", prescription=result.prescription)
        if result.status == "error" and not result.steps:  # the remedies threw
            return trial("error", error=result.error)
        short = self._shortfall(late, result.steps)
        if short or result.status == "too_long":
            return trial("not_tried", reason=short or "the budget left is too small")
        if result.status == "error":  # the run threw
            return trial("error", error=result.error)
        history = result.history
        assert history is not None  # status "ran"
        self.ledger.charge(f"{stage} {'+'.join(group)}", history.steps)
        stop_if_interrupted(history)
        candidate = self._candidate(result, group)
        metrics = metrics_of(history)
        full_run = (candidate, result.diagnosis) if late else None
        score, baseline_score = self.scoring.of(metrics), self._reference(result.steps, late)
        probed = full_run[1].findings if full_run else None
        why_not = self._why_not(score, baseline_score, probed, screen=full_run is None)
        gave_up = (
            f"given up after {history.steps} of {result.steps} steps: neither its loss nor its "
            f"score had moved from the trivial predictor's"
            if history.stopped == STUCK_STOP
            else None
        )
        return trial(
            "no_gain" if why_not else "passed",
            note="; ".join(n for n in (last_chance, gave_up, why_not) if n) or None,
            steps=history.steps,
            metrics=metrics,
            score=score,
            baseline_score=baseline_score,
            clipped_fraction=float(np.mean(history.clipped)) if history.clipped else math.nan,
            blew_up=_blew_up(history),
            full_run=full_run,
            candidate=candidate,
            cached=result.cached,
        )

    def _why_not(
        self,
        score: float,
        baseline: float,
        findings: list[Finding] | None,
        screen: bool = False,
    ) -> str | None:
        """Why a run's score does not count as a gain, in words; None when it does: it must
        beat the untreated run by the noise margin, beat the trivial predictor, and (when it
        was probed) raise no critical finding that the untreated run did not."""
        sc = self.scoring
        if not score > baseline + self.margin:
            return (
                f"{sc.metric.replace('_', ' ')} {_score(score, sc)} does not beat the untreated "
                f"run's {_score(baseline, sc)} by the noise margin {self.margin:.3g}"
            )
        if not sc.beats_trivial(score, screen=screen):
            return (
                f"{sc.metric.replace('_', ' ')} {_score(score, sc)} is no better than "
                f"{sc.trivial_what}"
            )
        before = {f.kind for f in self.base.findings if f.severity == "critical"}
        new = sorted({f.kind for f in findings or [] if f.severity == "critical"} - before)
        if new:
            return f"it raises critical findings the untreated run did not: {', '.join(new)}"
        return None

    def _candidate(self, result: TrialResult, group: list[str]) -> Experiment:
        """The treated experiment the trial ran; one from the trial cache is rebuilt here."""
        return result.candidate or apply_remedies(self.exp, group, self._context_for(group))

    def _most_steps(self, group: list[str], late: bool) -> int:
        """The steps a screen of ``group`` may cost at most: its run and its remedies' own."""
        own = sum(REMEDIES[r].cost(self.exp) for r in group if r in REMEDIES)
        return (self.exp.steps if late else self.screen_steps) + own

    def _screen_spec(self, group: list[str], late: bool) -> TrialSpec:
        """A screen as a trial: the remedies on this round's experiment, from its seed, for
        the screening steps (a late-effect remedy: the full run, probed). The allowance lets
        the trial refuse to train when the remedies' own steps and its length do not fit."""
        reserve = 0.0 if late else self.one_run
        return TrialSpec(
            self.exp,
            tuple(group),
            self._context_for(group),
            steps=None if late else self.screen_steps,
            probed=late,
            allowance=(self.ledger.left, self.ledger.run_steps, reserve),
            give_up=None if late else self._give_up(group),
        )

    def _give_up(self, group: list[str]) -> GiveUpWhenStuck | None:
        """A short screen stops half way when it has learned nothing (``GiveUpWhenStuck``),
        unless its remedies slow the start by design, or nothing is known to compare with."""
        half = self.screen_steps // 2
        if set(group) & SLOW_START or half < 1 or not math.isfinite(self.scoring.trivial):
            return None
        return GiveUpWhenStuck(half, self.screen_steps, self.scoring)

    def _noise_spec(self, offset: int = 1) -> TrialSpec:
        """The untreated run from the seed ``offset`` past its own, to the screening point."""
        seed = self.exp.seed + offset
        return TrialSpec(self.exp, seed=seed, steps=self.screen_steps, catch=False)

    def _prefetch(self, candidates: list[list[str]]) -> None:
        """Hand worker processes or Ray the noise run and the screens that fit even if each
        costs its most, so they run side by side. The search still takes the results in its
        own order and decides exactly as it would one by one (a screen run ahead that no
        longer fits when its turn comes is not counted); in-process this does nothing."""
        if not self.engine.remote:
            return
        need = self.ledger.runs(self.screen_steps)
        if self.ledger.fits(need):
            self.engine.submit(self._noise_spec())
        for group in candidates[:MAX_CANDIDATES]:
            late = any(r in LATE_EFFECT for r in group)
            need += self.ledger.runs(self._most_steps(group, late))
            if not self.ledger.fits(need + (0.0 if late else self.one_run)):
                return
            self.engine.submit(self._screen_spec(group, late))

    def _shortfall(self, late: bool, steps: int) -> str | None:
        """Why a screen of ``steps`` does not fit, in words; None when it does. A short
        screen leaves room for its verification run; a full-length one is its own, but once
        a short screen has passed it too leaves that room: the passed candidate's
        verification comes first."""
        reserve = self.one_run if (not late or self._waiting()) else 0.0
        need = self.ledger.runs(steps) + reserve
        if self.ledger.fits(need):
            return None
        what = (
            "this full-length screen and the verification of a passed screen need"
            if late
            else "this screen and its verification need"
        )
        return self.ledger.shortfall(need, what)

    def _reference(self, steps: int, late: bool) -> float:
        """What a screen of ``steps`` must beat: the untreated run's score at the same step,
        or its final score when that is lower. An untreated run that was better at the
        screening point than at its end (it oscillated, or decayed) would otherwise be
        judged by a moment it did not keep: SGD with momentum 0.99 scored 61% at a fifth of
        its run and 28% at the end, and lower_lr, Adam and batch norm (59-70% over the full
        run) all failed their screens against the 61%. The verification still compares full
        runs."""
        at = self.scoring.at(self.base.history, steps)
        return at if late else min(at, self.base_score)

    def _blew_up_again(self, group: list[str], trial: Trial) -> bool:
        """lower_lr ran, did not pass, and its run still blew up (``_blew_up``): another
        cut of its rate is worth a screen, up to ``MAX_RATE_CUTS``."""
        return (
            group == ["lower_lr"]
            and trial.status == "no_gain"
            and trial.blew_up
            and self.rate_cuts < MAX_RATE_CUTS
        )

    def _context_for(self, group: list[str]) -> Context:
        """The context a remedy set is applied with: lower_lr's carries its rate cuts."""
        if "lower_lr" not in group or not self.rate_cuts:
            return self.ctx
        return dataclasses.replace(self.ctx, lr_cuts=self.rate_cuts)

    def _waiting(self) -> bool:
        """A short screen passed: its verification needs a run kept for it."""
        return any(t.full_run is None for t in self.passed)

    # -- helpers --------------------------------------------------------------------------

    def _record(self, trial: Trial) -> None:
        self.search.trials.append(trial)

    def _nothing(self, message: str, interrupted: bool = False) -> Outcome:
        return Outcome([], self.exp, self.base, message, interrupted)

    def _applied(self, remedies: list[str], score: float) -> str:
        sc = self.scoring
        return (
            f"{' + '.join(remedies)} kept: {sc.metric.replace('_', ' ')} "
            f"{_score(self.base_score, sc)} -> {_score(score, sc)} (noise margin "
            f"{self.margin:.3g}) in {time.time() - self.started:.0f} s"
        )


# -- candidates and the context the remedies read -------------------------------------------


def candidate_remedies(findings: list[Finding]) -> list[list[str]]:
    """Remedy sets to screen, from the warning and critical findings' remedies: root causes
    first (a finding another one is ``caused_by``), then the most severe finding first."""
    problems = sort_findings([f for f in findings if f.is_problem])
    roots = {f.caused_by for f in findings if f.caused_by}
    # stable: severity order within roots, upstream problems, the rest
    problems.sort(key=lambda f: (f.kind not in roots, f.kind not in UPSTREAM))
    seen: list[list[str]] = []
    for f in problems:
        for name in f.remedies:
            group = [name] + ([PAIRED[name]] if name in PAIRED else [])
            if group not in seen and all(n in REMEDIES for n in group):
                seen.append(group)
    return seen


def _with_rate(
    candidates: list[list[str]], findings: list[Finding], exp: Experiment
) -> list[list[str]]:
    """Large inputs under a non-adaptive optimizer (SGD): standardize_inputs is screened with
    a rate re-chosen by raise_lr's range test first, then alone. SGD's step on a weight
    scales with its input, so the rate was tuned to the raw scale and is too small once
    the inputs shrink to unit variance (raw digits, SGD at 0.01: 91.7% untreated, 50.0%
    standardised, 96.9% standardised at the range test's 0.19). Adam divides the scale out."""
    large = any(
        f.kind == "unscaled_inputs" and f.is_problem and float(f.evidence.get("rms", 0.0)) > 1.0
        for f in findings
    )
    if not large or is_adaptive(exp) or ["standardize_inputs"] not in candidates:
        return candidates
    at = candidates.index(["standardize_inputs"])
    return [*candidates[:at], ["standardize_inputs", "raise_lr"], *candidates[at:]]


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


# -- scoring --------------------------------------------------------------------------------


def stop_if_interrupted(history: History) -> History:
    """The training loop turns Ctrl-C into a clean stop of that one run; treat stops too."""
    if history.stopped == "interrupted":
        raise KeyboardInterrupt
    return history


def _blew_up(history: History) -> bool:
    """The training loss ended non-finite, or above the first step's: it rose instead of
    falling (SGD at 300 on digits ends at 1e32 with every ReLU dead, finite but diverged)."""
    losses = [float(v) for v in history.loss]
    if not losses:
        return False
    tail = losses[-max(1, len(losses) // BLOWUP_TAIL) :]
    return not all(math.isfinite(v) for v in tail) or float(np.median(tail)) > losses[0]


def _score(value: float, scoring: Scoring) -> str:
    """A score as a person reads it: a loss as the loss, an infinity as what it means."""
    if not math.isfinite(value):
        return "none (the run blew up)" if value < 0 else "not finite"
    return f"{value:.3g}" if scoring.uses_accuracy else f"{-value:.3g}"


def rank(trial: Trial) -> tuple[float, int]:
    """The larger gain first; on a tie, fewer changes."""
    return trial.score, -len(trial.remedies)

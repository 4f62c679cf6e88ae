"""The few facts both the page and the terminal lead with, read from a result dict.

One place decides what the headline says and which numbers matter, so the HTML header and
the terminal summary never disagree.
"""

from __future__ import annotations

import math
from typing import Any

from ..wording import rounded

KIND_TITLES = {
    "diagnosis": "Diagnosis",
    "checkup": "Checkup",
    "treatment": "Treatment",
    "compression": "Compression",
}


def result_type(data: dict[str, Any]) -> str:
    """``diagnosis``, ``checkup``, ``treatment`` (or whatever follows ``deepdoctor.``)."""
    return str(data.get("schema", "deepdoctor.result")).removeprefix("deepdoctor.")


def problems(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in data.get("findings", []) if f.get("severity") in ("warning", "critical")]


def headline(data: dict[str, Any]) -> str:
    """``healthy`` or ``3 problems (1 critical, 2 warning)``; a compression: its choice."""
    if result_type(data) == "compression":
        return _compression_headline(data)
    found = problems(data)
    verdict = data.get("verdict") if result_type(data) == "treatment" else None
    if not found:
        return str(verdict) if verdict and verdict != "not repaired" else "healthy"
    counts = []
    for severity in ("critical", "warning"):
        n = sum(f["severity"] == severity for f in found)
        if n:
            counts.append(f"{n} {severity}{'s' if n > 1 and severity == 'warning' else ''}")
    noun = "problem" if len(found) == 1 else "problems"
    line = f"{len(found)} {noun} ({', '.join(counts)})"
    # a treatment says first whether it repaired the run, then what is left
    return f"{verdict}: {line} left" if verdict else line


def title(data: dict[str, Any]) -> str:
    kind = KIND_TITLES.get(result_type(data), result_type(data).capitalize())
    name = (data.get("experiment") or {}).get("name")
    return f"{kind} of {name}" if name else kind


def number(value: Any, digits: int = 4) -> str:
    """A number as people read it: 3 significant digits for floats, separators for ints."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"  # 1e-06, 3.2e-05, 1.23e+05
        return f"{value:.{digits}g}"
    return str(value)


def percent(value: Any) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "n/a"
    return f"{100 * value:.1f}%"


def _final_metrics(history: dict[str, Any] | None) -> dict[str, Any]:
    evals = (history or {}).get("evals") or []
    return dict(evals[-1]) if evals else {}


def _metric_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for key, label, fmt in (
        ("val_accuracy", "final validation accuracy", percent),
        ("val_loss", "final validation loss", number),
        ("train_accuracy", "final training accuracy", percent),
        ("train_loss", "final training loss", number),
    ):
        if metrics.get(key) is not None:
            rows.append((label, fmt(metrics[key])))
    return rows


def _stop_row(data: dict[str, Any]) -> list[tuple[str, str]]:
    history = data.get("history") or {}
    stopped = data.get("stopped") or {}
    reason = stopped.get("reason", history.get("stopped"))
    step = stopped.get("step", history.get("stop_step"))
    steps = history.get("steps")
    if reason is None:
        return []
    if reason == "completed":
        return [("training", f"completed {number(steps)} steps" if steps else "completed")]
    return [("training stopped", f"{reason} at step {number(step)}")]


def _chosen(data: dict[str, Any]) -> dict[str, Any]:
    index = data.get("chosen")
    return data["baseline"] if index is None else data["points"][index]


def _compression_headline(data: dict[str, Any]) -> str:
    chosen, base = _chosen(data), data["baseline"]
    if chosen is base:
        return "no compressed model kept the baseline's accuracy: keep the baseline"
    share = chosen["connections"] / max(1, base["connections"])
    return f"chosen: {chosen['method']}, {chosen['setting']} ({percent(share)} of the connections)"


def depth_words(depth: dict[str, Any]) -> str | None:
    """The checkup's trainable depth as stored, in weight layers (what the fit counts)."""
    trainable, current = depth.get("trainable_depth"), depth.get("current_depth")
    of = f" (this network: {number(current)} weight layers)" if current is not None else ""
    if isinstance(trainable, int | float):
        return f"about {number(trainable, 3)} weight layers{of}"
    if "trainable_depth" not in depth:
        return None
    # JSON null: the fit found no geometric trend (unlimited), or had too few layers to fit.
    if depth.get("grad_rate_per_layer") is None:
        return f"not estimated: too few weight layers with a gradient to fit a trend{of}"
    return f"unlimited: the gradient shows no geometric trend through depth{of}"


def speed_comparison(first: Any, last: Any) -> str:
    """How the first layer's learning speed compares with the last's, in words."""
    if not isinstance(first, int | float) or not isinstance(last, int | float):
        return "one of the two speeds is not finite (NaN or Inf), so they cannot be compared"
    if not (math.isfinite(first) and math.isfinite(last)) or last <= 0:
        return "one of the two speeds is not finite (NaN or Inf), so they cannot be compared"
    if first == 0:
        return (
            "the first layer's gradient underflowed to exactly 0: it does not learn at "
            f"all, while the last layer's is {rounded(last)}"
        )
    if first < last:
        return f"the first layer learns {rounded(last / first)} times slower than the last"
    return f"the first layer learns {rounded(first / last)} times as fast as the last"


def _speed(value: Any) -> str:
    return rounded(value) if isinstance(value, int | float) else "not finite"


def speed_rows(speed: dict[str, Any]) -> list[tuple[str, str]]:
    """The stored learning speed of the first and last layer, at the start and the end, and
    how the two compare at the end."""
    start, end = speed.get("start") or [], speed.get("end") or []
    if not start or not end:
        return []
    return [
        (
            "learning speed, first / last layer",
            f"{_speed(start[0])} / {_speed(start[-1])} at the start, "
            f"{_speed(end[0])} / {_speed(end[-1])} at the end",
        ),
        ("first vs last layer at the end", speed_comparison(end[0], end[-1])),
    ]


def key_numbers(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs for the few numbers worth reading first."""
    kind = result_type(data)
    rows: list[tuple[str, str]] = []
    if kind == "compression":
        chosen, base = _chosen(data), data["baseline"]
        for key, label, fmt in (
            ("val_accuracy", "validation accuracy", percent),
            ("connections", "connections", number),
            ("bytes", "saved bytes", number),
            ("latency_ms", "latency (ms per batch)", number),
        ):
            rows.append((label, f"{fmt(base.get(key))} -> {fmt(chosen.get(key))}"))
        rows.append(("points measured", number(len(data.get("points") or []))))
        return rows
    if kind == "treatment":
        applied = data.get("applied") or []
        if data.get("verdict"):
            rows.append(("verdict", str(data["verdict"])))
        rows.append(("remedies applied", ", ".join(applied) if applied else "none"))
        before, after = data.get("before") or {}, data.get("after") or {}
        balanced = (data.get("scoring") or {}).get("metric") == "balanced_accuracy"
        for key, label, fmt in (
            ("val_balanced_accuracy", "validation balanced accuracy", percent),
            ("val_accuracy", "validation accuracy", percent),
            ("val_loss", "validation loss", number),
            ("train_loss", "training loss", number),
        ):
            if key == "val_balanced_accuracy" and not balanced:
                continue  # shown only when treat scored by it (imbalanced classes)
            if key in before or key in after:
                b, a = metric_value(before.get(key), fmt), metric_value(after.get(key), fmt)
                rows.append((label, f"{b} -> {a}"))
        if data.get("compute") is not None:
            rows.append(("compute spent", f"{number(data['compute'], 3)} untreated runs"))
        return rows
    rows += _metric_rows(_final_metrics(data.get("history")))
    rows += _stop_row(data)
    rows += speed_rows(data.get("learning_speed") or {})
    loss = data.get("loss") or {}
    if loss.get("value") is not None:
        expected = loss.get("expected")
        suffix = f" (calibrated start: {number(expected)})" if expected is not None else ""
        rows.append(("loss at initialisation", number(loss["value"]) + suffix))
    depth = depth_words(data.get("depth") or {})
    if depth:
        rows.append(("estimated trainable depth", depth))
    total = (data.get("complexity") or {}).get("total") or {}
    if total.get("params") is not None:
        rows.append(("parameters", number(total["params"])))
    return rows


# -- treat's trials ---------------------------------------------------------------------------


def score_label(metrics: dict[str, Any], metric: str | None = None) -> tuple[str, bool]:
    """(what a trial's score is, in words; whether it is an accuracy). ``metric`` is what treat
    scored by (the Treatment's ``scoring.metric``: balanced_accuracy, accuracy or loss); a
    file without it gets validation accuracy where the trial has one, else training
    accuracy, else the loss."""
    split = "validation" if any(k.startswith("val_") for k in metrics) else "training"
    if metric == "balanced_accuracy" and "val_balanced_accuracy" in metrics:
        return "validation balanced accuracy", True
    if metric in (None, "accuracy", "balanced_accuracy"):
        for key, name in (
            ("val_accuracy", "validation accuracy"),
            ("train_accuracy", "training accuracy"),
        ):
            if key in metrics:
                return name, True
    return f"{split} loss", False


def _no_score(metrics: dict[str, Any]) -> str:
    """Why a run has no score (its score was non-finite, stored as null), in words."""
    if not metrics:
        return "it stopped before its first evaluation"
    return "its loss was not finite (NaN or Inf)"


def trial_gain(trial: dict[str, Any], metric: str | None = None) -> str:
    """How a treat trial compared with the untreated run at the same steps, in words.

    A trial's score is what treat scored by (``metric``, see ``score_label``), so the text
    names it; a score that was not finite (null in the JSON) says why instead of printing a
    number.
    """
    if not trial.get("steps"):
        return ""
    score, base = trial.get("score"), trial.get("baseline_score")
    metrics = trial.get("metrics") or {}
    label, accuracy = score_label(metrics, metric)
    if not isinstance(score, int | float):
        return f"no score: {_no_score(metrics)}"
    shown = percent(score) if accuracy else number(-score)
    if not isinstance(base, int | float):
        return (
            f"{label} {shown}; the untreated run had no score at this step (its loss was "
            "not finite, or it had not been evaluated yet)"
        )
    if accuracy:
        return f"{label} {shown} vs {percent(base)} untreated, {100 * (score - base):+.1f} points"
    return f"{label} {shown} vs {number(-base)} untreated, {base - score:+.3g}"


def trial_stage(trial: dict[str, Any]) -> str:
    """The trial's stage (screen, combine, verify), with its round after the first."""
    stage, number = str(trial.get("stage", "")), trial.get("round") or 1
    return stage if number == 1 else f"{stage} (round {number})"


def trial_status(trial: dict[str, Any]) -> str:
    """The trial's ``status`` (kept, passed, no_gain, not_tried, error, prescription); a file
    written before treat wrote it gets the status its flags give."""
    if trial.get("status"):
        return str(trial["status"])
    if trial.get("kept"):
        return "kept"
    if trial.get("prescription"):
        return "prescription"
    if trial.get("error"):
        return "error"
    return "passed" if trial.get("passed") else "no_gain"


def _same_set(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return sorted(a.get("remedies", [])) == sorted(b.get("remedies", [])) and (
        a.get("round") or 1
    ) == (b.get("round") or 1)


def verification_of(trial: dict[str, Any], trials: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The verify-stage trial of the same remedy set and round, if one ran."""
    if trial.get("stage") == "verify":
        return trial
    return next((t for t in trials if t.get("stage") == "verify" and _same_set(t, trial)), None)


def trial_outcome(
    trial: dict[str, Any], trials: list[dict[str, Any]] | None = None, metric: str | None = None
) -> tuple[str, str]:
    """(status, words) for a treat trial: its status and what happened, with its own numbers.
    ``trials`` (all of them) lets a screen that was kept point at its verification.
    A remedy the budget or the candidate limit left out is not_tried, with treat's reason."""
    status = trial_status(trial)
    gain = trial_gain(trial, metric)
    verify = trial.get("stage") == "verify"
    if status == "not_tried":
        return status, f"not tried: {trial.get('reason') or 'no reason was recorded'}"
    if status == "error":
        return status, f"failed: {trial.get('error')}"
    if status == "prescription":
        return status, f"prescription: {trial.get('prescription')}"
    if status == "kept" and verify:
        words = "verified and kept"
    elif status == "kept":
        verified = verification_of(trial, trials or []) is not None
        words = (
            "passed the screen, then verified and kept (see its verify row)"
            if verified
            else "kept: this full-length screen was its own verification"
        )
    elif status == "passed":
        words = "passed the screen, not kept"
    else:
        words = "verified, not kept" if verify else "tried, no gain"
    words = f"{words}: {gain}" if gain else words
    return status, f"{words}; {trial['note']}" if trial.get("note") else words


STAGE_WORDS = {"screen": "screened", "combine": "screened together", "verify": "verified"}


def remedy_trial(name: str, trials: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The trial that speaks for one remedy: its own set (the remedy alone, or with the
    partner it is always applied with), never a combination with another candidate; the
    verification of that set if it ran, else its last trial."""
    with_it = [t for t in trials if name in t.get("remedies", [])]
    if not with_it:
        return None
    own = [t for t in with_it if t.get("stage") != "combine"] or with_it
    smallest = min(len(t.get("remedies", [])) for t in own)
    own = [t for t in own if len(t.get("remedies", [])) == smallest]
    verified = [t for t in own if t.get("stage") == "verify"]
    return (verified or own)[-1]


def remedy_note(
    name: str, trials: list[dict[str, Any]], metric: str | None = None
) -> tuple[str, str] | None:
    """(status, words) for a finding's remedy: what its own trial found, naming the stage
    (screened over so many steps, or verified over the full run)."""
    trial = remedy_trial(name, trials)
    if trial is None:
        return None
    status = trial_status(trial)
    if status in ("not_tried", "error", "prescription"):
        return status, trial_outcome(trial, trials, metric)[1]
    others = [r for r in trial.get("remedies", []) if r != name]
    stage = STAGE_WORDS.get(str(trial.get("stage")), str(trial.get("stage")))
    if status == "kept" and trial.get("stage") != "verify":
        stage = "verified by a full-length screen"
    with_ = f" with {'+'.join(others)}" if others else ""
    round_ = f" in round {trial['round']}" if (trial.get("round") or 1) > 1 else ""
    verdict = {"kept": "kept", "passed": "passed, not kept"}.get(status, "no gain")
    gain = trial_gain(trial, metric)
    n = trial.get("steps")
    steps = f" over {number(n)} step{'' if n == 1 else 's'}" if n else ""
    words = f"{stage}{with_}{steps}{round_}: {verdict}" + (f", {gain}" if gain else "")
    if status != "kept":
        # Not kept alone, but part of a set that was (he_init within leaky_relu+he_init).
        kept = [t for t in trials if name in t.get("remedies", []) and trial_status(t) == "kept"]
        if kept:
            return "kept", f"{words}; applied as part of {'+'.join(kept[-1]['remedies'])}"
    return status, words


def metric_value(value: Any, fmt: Any = None) -> str:
    """A final metric of the untreated or treated run: null in the JSON means it was not
    finite, and the text says so rather than printing a bare n/a."""
    if value is None:
        return "not finite (NaN or Inf)"
    return str((fmt or number)(value))


# -- findings ---------------------------------------------------------------------------------


def grouped_findings(
    findings: list[dict[str, Any]],
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(root, its consequences) in the findings' order: a finding whose ``caused_by`` names
    another finding in the list is shown under it, not as a problem of its own."""
    kinds = {f.get("kind") for f in findings}
    under: dict[Any, list[dict[str, Any]]] = {}
    for f in findings:
        if f.get("caused_by") in kinds and f.get("caused_by") != f.get("kind"):
            under.setdefault(f["caused_by"], []).append(f)
    return [
        (f, under.get(f.get("kind"), []))
        for f in findings
        if not (f.get("caused_by") in kinds and f.get("caused_by") != f.get("kind"))
    ]


def _when(f: dict[str, Any]) -> str:
    evidence = f.get("evidence") or {}
    step = evidence.get("step")
    if isinstance(step, int) and step > 0:
        return f"at step {step:,}"
    if step == 0:
        return "at initialisation"
    phase = evidence.get("phase")
    return {"initialisation": "at initialisation", "whole run": "over the run"}.get(
        str(phase), "in the run"
    )


def finding_notes(findings: list[dict[str, Any]]) -> dict[str, str]:
    """Sentences that reconcile findings which would otherwise read as a contradiction, by
    kind: vanishing and exploding gradients naming the same layers were measured at
    different times (or by different rules), and the note says when each was."""
    by_kind = {f.get("kind"): f for f in findings}
    vanish, explode = by_kind.get("vanishing_gradients"), by_kind.get("exploding_gradients")
    if vanish is None or explode is None or explode.get("caused_by"):
        return {}
    shared = set(vanish.get("layers") or []) & set(explode.get("layers") or [])
    if not shared:
        return {}
    when_v, when_e = _when(vanish), _when(explode)
    if when_v != when_e:
        how = (
            f"the gradients vanished towards the input {when_v} and exploded {when_e}: "
            "the run passed from one to the other"
        )
    else:
        how = (
            f"{when_v} the first layers' gradients were far smaller than the last ones' "
            "(vanishing compares the two ends), while the gradients were outsized against "
            "the weights or jumped (exploding judges their size, not their profile)"
        )
    note = (
        f"Both vanishing and exploding gradients name {len(shared):,} of the same layers, "
        f"and both are real: {how}."
    )
    return {"vanishing_gradients": note, "exploding_gradients": note}

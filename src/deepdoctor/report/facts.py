"""The few facts both the page and the terminal lead with, read from a result dict.

One place decides what the headline says and which numbers matter, so the HTML header and
the terminal summary never disagree.
"""

from __future__ import annotations

import math
from typing import Any

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
    if not found:
        return "healthy"
    counts = [
        f"{sum(f['severity'] == s for f in found)} {s}"
        for s in ("critical", "warning")
        if any(f["severity"] == s for f in found)
    ]
    noun = "problem" if len(found) == 1 else "problems"
    return f"{len(found)} {noun} ({', '.join(counts)})"


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
        rows.append(("remedies applied", ", ".join(applied) if applied else "none"))
        before, after = data.get("before") or {}, data.get("after") or {}
        for key, label, fmt in (
            ("val_accuracy", "validation accuracy", percent),
            ("val_loss", "validation loss", number),
            ("train_loss", "training loss", number),
        ):
            if key in before or key in after:
                rows.append((label, f"{fmt(before.get(key))} -> {fmt(after.get(key))}"))
        if data.get("compute") is not None:
            rows.append(("compute spent", f"{number(data['compute'], 3)} untreated runs"))
        return rows
    rows += _metric_rows(_final_metrics(data.get("history")))
    rows += _stop_row(data)
    loss = data.get("loss") or {}
    if loss.get("value") is not None:
        expected = loss.get("expected")
        suffix = f" (calibrated start: {number(expected)})" if expected is not None else ""
        rows.append(("loss at initialisation", number(loss["value"]) + suffix))
    depth = data.get("depth") or {}
    if depth.get("trainable_depth") is not None:
        current = depth.get("current_depth")
        of = f" (this network: {number(current)})" if current is not None else ""
        rows.append(
            ("estimated trainable depth", f"{number(depth['trainable_depth'])} layers" + of)
        )
    total = (data.get("complexity") or {}).get("total") or {}
    if total.get("params") is not None:
        rows.append(("parameters", number(total["params"])))
    return rows


def trial_gain(trial: dict[str, Any]) -> str:
    """How a treat trial compared with the untreated run at the same steps, in words.

    A trial's score is its validation accuracy where the task has one (else training
    accuracy, else minus the loss), so the text names whichever it was.
    """
    score, base = trial.get("score"), trial.get("baseline_score")
    if not isinstance(score, int | float) or not isinstance(base, int | float):
        return ""
    metrics = trial.get("metrics") or {}
    for key, label in (
        ("val_accuracy", "validation accuracy"),
        ("train_accuracy", "training accuracy"),
    ):
        if metrics.get(key) is not None:
            return (
                f"{label} {percent(score)} vs {percent(base)} untreated, "
                f"{100 * (score - base):+.1f} points"
            )
    label = "validation loss" if "val_loss" in metrics else "loss"
    return f"{label} {number(-score)} vs {number(-base)} untreated, {base - score:+.3g}"


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


def trial_outcome(trial: dict[str, Any]) -> tuple[str, str]:
    """(status, words) for a treat trial: its status and what happened, with the numbers.
    A remedy the budget or the candidate limit left out is not_tried, with treat's reason."""
    status = trial_status(trial)
    gain = trial_gain(trial)
    if status == "kept":
        return status, f"verified and kept: {gain}" if gain else "verified and kept"
    if status == "not_tried":
        return status, f"not tried: {trial.get('reason')}"
    if status == "error":
        return status, f"failed: {trial.get('error')}"
    if status == "prescription":
        return status, f"prescription: {trial.get('prescription')}"
    words = "passed screening, not kept" if status == "passed" else "tried, not kept"
    words = f"{words}: {gain}" if gain else words
    return status, f"{words}; {trial['note']}" if trial.get("note") else words

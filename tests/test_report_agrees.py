"""What a person sees agrees with the result: every number on the page and in the terminal is
the one the result's JSON holds, consequences sit under their cause, nothing internal or
non-finite is printed bare, and the plots keep to their captions.

The results are real: a small treat (dead ReLUs: a remedy pair, a kept screen, its
verification), a treat and a diagnosis of a run whose loss goes NaN, a checkup of a
batch-normalised MLP (norm rows among the weight layers) and a short diagnosis.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import numpy as np
import pytest
import report_cases as rc
from page_dom import header_numbers, parse, table_after
from rich.console import Console

import deepdoctor as dd
from deepdoctor.checkup import checkup, checkup_experiment
from deepdoctor.commands.demo import learning_speed_table
from deepdoctor.detectors import activations, gradients
from deepdoctor.diagnose import diagnose_experiment
from deepdoctor.presets import get_preset
from deepdoctor.report import plots as report_plots
from deepdoctor.report import print_summary, render_html
from deepdoctor.report.terminal import print_trials
from deepdoctor.treat import treat
from deepdoctor.wording import rounded


def json_ready(result: Any) -> dict[str, Any]:
    return json.loads(json.dumps(result.to_dict(), allow_nan=False))


@pytest.fixture(scope="module")
def treatment() -> dict[str, Any]:
    return json_ready(treat(get_preset("dead-relu-digits").replace(steps=40), budget=3))


@pytest.fixture(scope="module")
def nan_treatment() -> dict[str, Any]:
    return json_ready(treat(get_preset("nonfinite-adam-eps0-digits").replace(steps=30), budget=3))


@pytest.fixture(scope="module")
def nan_diagnosis() -> dict[str, Any]:
    return json_ready(
        diagnose_experiment(get_preset("nonfinite-adam-eps0-digits").replace(steps=12))
    )


@pytest.fixture(scope="module")
def diagnosis() -> dd.Diagnosis:
    return diagnose_experiment(get_preset("sigmoid-mlp50-digits").replace(steps=12))


@pytest.fixture(scope="module")
def bn_checkup() -> dict[str, Any]:
    split = dd.data.load("digits", subset=200)
    torch_model = dd.models.mlp(64, 10, depth=12, width=16, activation="sigmoid", norm="batch")
    return json_ready(checkup(torch_model, (split.train[0][:64], split.train[1][:64])))


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


# -- one source for every number --------------------------------------------------------------


def test_treatment_headline_is_the_json_before_after_and_compute(treatment: dict[str, Any]) -> None:
    numbers = header_numbers(parse(render_html(treatment)))
    before, after = treatment["before"], treatment["after"]
    assert numbers["validation accuracy"] == (
        f"{pct(before['val_accuracy'])} -> {pct(after['val_accuracy'])}"
    )
    assert numbers["validation loss"] == f"{before['val_loss']:.4g} -> {after['val_loss']:.4g}"
    assert numbers["compute spent"] == f"{treatment['compute']:.3g} untreated runs"
    assert numbers["remedies applied"] == ", ".join(treatment["applied"])
    # the verified trial of what was applied is the 'after' of the headline
    verified = [t for t in treatment["trials"] if t["stage"] == "verify" and t["status"] == "kept"]
    assert verified and verified[-1]["metrics"]["val_accuracy"] == after["val_accuracy"]


def test_trials_table_rows_are_the_trials_of_the_json(treatment: dict[str, Any]) -> None:
    rows = table_after(parse(render_html(treatment)), "Every remedy tried")
    trials = treatment["trials"]
    assert len(rows) == len(trials)
    for (remedies, stage, steps, result), t in zip(rows, trials, strict=True):
        assert remedies == "+".join(t["remedies"])
        assert stage.split(" ")[0] == t["stage"]
        assert steps == (f"{t['steps']:,}" if t["steps"] else "")
        if t["status"] == "not_tried":
            assert result == f"not tried: {t['reason']}"
        elif t["score"] is not None:
            base = t["baseline_score"]
            gain = f"{100 * (t['score'] - base):+.1f} points"
            assert f"{pct(t['score'])} vs {pct(base)} untreated, {gain}" in result
    statuses = {t["status"] for t in trials}
    assert {"kept", "not_tried"} <= statuses  # the case exercises more than one status


def own_trial(name: str, trials: list[dict[str, Any]]) -> dict[str, Any]:
    """The test's own reading of 'the remedy's own trial': the fewest remedies holding it
    outside a combination, its verification when there is one."""
    mine = [t for t in trials if name in t["remedies"] and t["stage"] != "combine"]
    fewest = min(len(t["remedies"]) for t in mine)
    mine = [t for t in mine if len(t["remedies"]) == fewest]
    return ([t for t in mine if t["stage"] == "verify"] or mine)[-1]


def test_remedy_cards_show_their_own_trial_and_its_stage(treatment: dict[str, Any]) -> None:
    root = parse(render_html(treatment))
    items = root.find_all("li")
    cards = {li.attrs["data-remedy"]: li.text() for li in items if "data-remedy" in li.attrs}
    trials = treatment["trials"]
    checked = 0
    for name, text in cards.items():
        if not any(name in t["remedies"] for t in trials):
            continue
        t = own_trial(name, trials)
        if t["status"] == "not_tried":
            assert f"not tried: {t['reason']}" in text
            continue
        stage = "verified" if t["stage"] == "verify" else "screened"
        assert stage in text and f"over {t['steps']} step" in text, text
        assert f"{pct(t['score'])} vs {pct(t['baseline_score'])}" in text, (name, text)
        checked += 1
    assert checked >= 2
    # he_init has a screen of its own: its card never shows the pair's or the verify's numbers
    he = own_trial("he_init", trials)
    assert he["remedies"] == ["he_init"] and he["stage"] == "screen"
    others = [t for t in trials if t is not he and t["score"] is not None]
    assert all(
        f"{pct(t['score'])} vs" not in cards["he_init"] for t in others if t["score"] != he["score"]
    )


def test_diagnosis_learning_speed_is_stored_once_and_shown_as_stored(
    diagnosis: dd.Diagnosis,
) -> None:
    data = json_ready(diagnosis)
    speed = data["learning_speed"]
    # independently: the mean of the first and last 5 recorded bias-gradient norms per layer
    raw = diagnosis.trace.learning_speed()
    assert speed["window"] == 5 and speed["layers"] == diagnosis.trace.layers
    np.testing.assert_allclose(speed["start"], raw[:5].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(speed["end"], raw[-5:].mean(axis=0), rtol=1e-12)
    numbers = header_numbers(parse(render_html(data)))
    s, e = speed["start"], speed["end"]
    assert numbers["learning speed, first / last layer"] == (
        f"{rounded(s[0])} / {rounded(s[-1])} at the start, {rounded(e[0])} / {rounded(e[-1])} "
        "at the end"
    )
    assert numbers["final validation accuracy"] == pct(data["history"]["evals"][-1]["val_accuracy"])
    # the terminal: the same row in the summary, and the demo's table prints the stored values
    console = Console(file=io.StringIO(), width=200, no_color=True)
    with console.capture() as capture:
        print_summary(data, console)
        console.print(learning_speed_table(speed))
    out = capture.get()
    assert numbers["learning speed, first / last layer"] in out
    assert f"{s[0]:.2e}" in out and f"{e[-1]:.2e}" in out


def test_checkup_depth_counts_weight_layers_and_shades_by_them(bn_checkup: dict[str, Any]) -> None:
    layers, depth = bn_checkup["layers"], bn_checkup["depth"]
    weights = [i for i, layer in enumerate(layers) if layer["weight_layer"]]
    assert len(layers) > len(weights) == depth["current_depth"]  # BatchNorm rows in between
    numbers = header_numbers(parse(render_html(bn_checkup)))
    trainable = depth["trainable_depth"]
    if trainable is not None:
        assert numbers["estimated trainable depth"] == (
            f"about {trainable:.3g} weight layers (this network: {len(weights)} weight layers)"
        )
    # shading: every weight layer left of the edge is beyond the trainable depth
    rows = [{"weight_layer": w} for w in (True, False, True, False, True, False, True)]
    edge = report_plots.trainable_edge(rows, 2.4)  # 4 weight layers, the last 2 trainable
    assert edge == 3.5  # rows 0-3 (weight layers 0 and 1, and their norms) are shaded
    assert report_plots.trainable_edge(rows, 4.0) is None
    assert report_plots.trainable_edge([{}] * 6, 2.0) == 3.5  # old files: every row counts


def test_captions_state_the_detectors_rules() -> None:
    page = render_html(rc.synthetic_diagnosis(60, 8)) + render_html(rc.checkup_dict())
    assert "within about 10x" not in page and "two colour units" not in page
    for number in (gradients.VANISH_RATIO_INIT, gradients.VANISH_RATIO, gradients.EXPLODE_RATIO):
        assert f"{number:g}x" in page
    assert f"{gradients.EXPLODE_JUMP:g}x its median over the {gradients.JUMP_HISTORY} steps" in page
    assert f"over {gradients.EXPLODE_RELATIVE:g}x the weights" in page
    assert activations.SATURATED_FRAC == activations.DEAD_FRAC == 0.5  # "over half"
    assert f"less than {100 * activations.LEARNING_DROP:.0f}%" in page


# -- a finding list without contradictions ------------------------------------------------------


def cause_case() -> dict[str, Any]:
    root = dd.Finding(
        "unscaled_inputs",
        "warning",
        "The inputs have an RMS of 40.",
        evidence={"rms": 40.0, "explains": ["exploding_gradients"]},
        remedies=["standardize_inputs"],
    )
    consequence = dd.Finding(
        "exploding_gradients",
        "info",
        "Gradients grow 30x from the last layers to the first.",
        layers=["net.0"],
        evidence={"first_over_last": 30.0},
        remedies=["gradient_clipping"],
        caused_by="unscaled_inputs",
    )
    data = rc.hand_diagnosis()
    data["findings"] = [root.to_dict(), consequence.to_dict()]
    return data


def both_ways_case() -> dict[str, Any]:
    data = rc.hand_diagnosis()
    data["findings"] = [
        dd.Finding(
            "vanishing_gradients",
            "warning",
            "The first layers' gradients underflowed to exactly 0.",
            layers=["fc1", "fc2"],
            evidence={"phase": "initialisation"},
            remedies=["he_init"],
        ).to_dict(),
        dd.Finding(
            "exploding_gradients",
            "warning",
            "At step 12 the gradients were 9e+06x the size of the weights.",
            layers=["fc1", "fc2", "fc3"],
            evidence={"relative_grad": 9e6, "step": 12},
            remedies=["gradient_clipping"],
        ).to_dict(),
    ]
    return data


def summary(data: dict[str, Any], width: int) -> str:
    console = Console(file=io.StringIO(), width=width, no_color=True)
    with console.capture() as capture:
        print_summary(data, console)
    return capture.get()


def test_a_consequence_is_shown_under_its_root_cause() -> None:
    data = cause_case()
    root = parse(render_html(data))
    articles = root.find_all("article")
    top = [a for a in articles if not a.ancestors("article")]
    assert len(top) == 1 and "unscaled_inputs" in top[0].text()
    nested = [a for a in articles if a.ancestors("article")]
    assert len(nested) == 1 and "exploding_gradients" in nested[0].text()
    assert "a consequence, not a second problem" in top[0].text()
    for width in (80, 120):
        out = summary(data, width)
        assert out.index("unscaled_inputs") < out.index("exploding_gradients")
        assert "a consequence of unscaled_inputs" in out


def test_vanishing_and_exploding_on_the_same_layers_say_when_each_was_seen() -> None:
    data = both_ways_case()
    page = render_html(data)
    notes = [n.text() for n in parse(page).find_all("p", **{"class": "note"})]
    assert len(notes) == 2 and notes[0] == notes[1]
    assert "vanished towards the input at initialisation and exploded at step 12" in notes[0]
    assert "2 of the same layers" in notes[0]
    for width in (80, 120):
        assert "exploded at step 12" in " ".join(summary(data, width).split())


# -- no internal names or raw infinities ------------------------------------------------------

# A bare non-finite value or a constant's name; "NaN or Inf" in a sentence is the words.
RAW = re.compile(r"-inf\b|\binf\b|\bnan\b|\bNaN\b(?!(?:,| or) Inf)|Infinity|\b[A-Z]{2,}_[A-Z_]+\b")


def visible_text(page: str) -> str:
    return parse(page).text()


def test_nothing_internal_or_non_finite_is_printed_bare(
    treatment: dict[str, Any],
    nan_treatment: dict[str, Any],
    nan_diagnosis: dict[str, Any],
    bn_checkup: dict[str, Any],
) -> None:
    # the NaN run really has non-finite scores and losses for the words to explain
    assert nan_treatment["before"]["val_loss"] is None
    assert any(t["steps"] and t["score"] is None for t in nan_treatment["trials"])
    assert nan_diagnosis["stopped"]["reason"] == "nonfinite_loss"
    texts = []
    for data in (treatment, nan_treatment, nan_diagnosis, bn_checkup):
        texts.append(visible_text(render_html(data)))
        for width in (80, 120):
            texts.append(summary(data, width))
    for data in (treatment, nan_treatment):
        for width in (80, 120):
            console = Console(file=io.StringIO(), width=width, no_color=True)
            with console.capture() as capture:
                print_trials(data["trials"], console)
            texts.append(capture.get())
    for text in texts:
        assert RAW.findall(text) == []
    nan_page = visible_text(render_html(nan_treatment))
    assert "not finite (NaN or Inf) -> " in nan_page  # the untreated validation loss
    assert "no score: its loss was not finite (NaN or Inf)" in nan_page
    assert "treat screens at most 6 remedy sets a round" in visible_text(render_html(treatment))


# -- plots keep to their captions ---------------------------------------------------------------


def test_untreated_curves_are_dashed_treated_solid_and_the_legend_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    figures: list[Any] = []
    monkeypatch.setattr(report_plots, "_png", lambda fig: figures.append(fig) or "")
    data = rc.treatment_dict()
    plot = report_plots.training_curves(data["history_after"], data["history_before"])
    assert plot is not None and plot.caption.startswith("Dashed: the untreated run; solid:")
    palette = {
        report_plots.BLUE,
        report_plots.ORANGE,
        report_plots.SKY,
        report_plots.VERMILLION,
        "0.6",
    }
    for ax in figures[0].axes:
        for line in ax.get_lines():
            label = str(line.get_label())
            if label.startswith("untreated: "):
                assert line.get_linestyle() == "--", label
            elif label.startswith("treated: "):
                assert line.get_linestyle() == "-", label
            assert line.get_color() in palette
        legend = ax.get_legend()
        texts = [t.get_text() for t in legend.get_texts()]
        assert texts[:2] == ["untreated run (dashed)", "treated run (solid)"]
        styles = [h.get_linestyle() for h in legend.legend_handles[:2]]
        assert styles == ["--", "-"]
        assert not any(t.startswith(("untreated:", "treated:")) for t in texts)


def test_demo_experiment_checkup_names_its_experiment() -> None:
    data = json_ready(checkup_experiment(get_preset("healthy-mlp-digits")))
    assert data["experiment"]["name"] == "healthy-mlp-digits"
    title = parse(render_html(data)).find_all("h1")[0].text()
    assert title == "Checkup of healthy-mlp-digits"

"""The HTML report, its JSON schema and ``deepdoctor report``: drawn from result dicts only."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import report_cases as rc

import deepdoctor as dd
from deepdoctor.cli import main
from deepdoctor.findings import KINDS, REMEDIES
from deepdoctor.report import (
    SCHEMA_FILE,
    check_result,
    load_result,
    plots,
    render_html,
    write_report,
)
from deepdoctor.results import Result
from deepdoctor.trace import SPEED_WINDOW, speed_at_ends

MAX_PAGE_BYTES = 10_000_000  # the bound for a 100,000-step, 1,000-layer run


@pytest.fixture(scope="module")
def diagnosis() -> dict[str, Any]:
    return rc.real_diagnosis()


@pytest.fixture(scope="module")
def page(diagnosis: dict[str, Any]) -> str:
    return render_html(diagnosis)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def section_ids(page: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', page)


def sentence(note: str) -> str:
    return note[:1].upper() + note[1:] + "."


def images(page: str) -> list[str]:
    return re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)


# -- the page -----------------------------------------------------------------------------------


def test_diagnosis_page_shows_findings_first_then_every_plot(
    diagnosis: dict[str, Any], page: str
) -> None:
    assert section_ids(page) == ["findings", "gradient-flow", "activation-health", "curves"]
    pngs = images(page)
    # gradient heatmap, learning speed bars, activation health, curves
    assert len(pngs) == 4
    assert all(len(p) > 5000 for p in pngs)
    assert page.count("<figcaption>") == 4
    assert "Gradient norms shrink 40x" in page and "first_to_last_ratio" in page
    assert '<span class="badge">critical</span>' in page
    assert "2 problems (1 critical, 1 warning)" in page
    final = diagnosis["history"]["evals"][-1]["val_accuracy"]
    assert f"{100 * final:.1f}%" in page
    for note in (plots.HEATMAP_GAP_NOTE, plots.HEATMAP_PARTIAL_NOTE, plots.LINE_GAP_NOTE):
        assert note[1:] not in page


def test_page_is_self_contained(page: str) -> None:
    assert "default-src 'none'" in page  # the browser itself refuses any fetch
    # every src/href points into the page (data: URI or #anchor), none to the network
    refs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert refs and all(r.startswith(("data:", "#")) for r in refs)
    assert "<script" not in page.lower() and "<link" not in page.lower()


def test_checkup_page_has_depth_plot_and_complexity_table() -> None:
    data = rc.checkup_dict(n_layers=8)
    page = render_html(data)
    assert section_ids(page) == ["findings", "checkup", "complexity"]
    assert len(images(page)) == 1
    # 8 Linear(64, 64) layers: 64*64 + 64 = 4,160 parameters each, 33,280 in total
    assert page.count('<td class="num">4,160</td>') == 8
    assert '<tr class="total"><td>total</td><td></td><td class="num">33,280</td>' in page
    assert "about 4 weight layers (this network: 8 weight layers)" in page


def test_treatment_page_says_which_remedies_were_verified_and_by_how_much() -> None:
    page = render_html(rc.treatment_dict())
    assert section_ids(page) == ["findings", "treatment", "curves"]
    assert "verified and kept: validation accuracy 91.0% vs 10.0% untreated, +81.0 points" in page
    assert "tried, no gain: validation accuracy 11.0% vs 10.0% untreated, +1.0 points" in page
    # the card of adam shows adam's own screen, and says it was a screen
    assert "screened over 15 steps: no gain, validation accuracy 11.0% vs 10.0%" in page
    assert (
        '<td class="num">10.0%</td><td class="num">91.0%</td><td class="num">+81.0 points</td>'
    ) in page
    assert "Dashed: the untreated run" in page
    assert "10.0% -&gt; 91.0%" in page  # the headline numbers


def test_sections_appear_only_for_keys_present() -> None:
    bare = {"schema": "deepdoctor.diagnosis", "schema_version": 1, "healthy": True, "findings": []}
    page = render_html(bare)
    assert section_ids(page) == ["findings"]
    assert "No findings" in page and images(page) == []


# -- bad input ----------------------------------------------------------------------------------


def evil_everywhere() -> dict[str, Any]:
    """A diagnosis and checkup in one, with the script tag in every string the page shows."""
    trace = dd.Trace(
        [rc.EVIL, "ok$a$b$"],
        {rc.EVIL: "Linear", "ok$a$b$": "Linear"},
        act_layers=[rc.EVIL],
        act_kinds={rc.EVIL: "relu"},
    )
    for step in range(4):
        trace.layer.append(step, {"grad_norm_weight": [0.1, 1.0], "grad_norm_bias": [0.1, 1.0]})
        trace.acts.append(step, {"dead_frac": [0.25]})
    finding = dd.Finding(
        "dead_units",
        "warning",
        rc.EVIL,
        layers=[rc.EVIL],
        evidence={rc.EVIL: rc.EVIL},
        remedies=["leaky_relu_activation"],
    )
    data = rc.checkup_dict(names=[rc.EVIL, "b"])
    data.update(
        schema="deepdoctor.diagnosis",
        trace=trace.to_dict(),
        findings=[finding.to_dict()],
        experiment={"name": rc.EVIL, "description": rc.EVIL},
        stopped={"reason": rc.EVIL, "step": 2},
        learning_speed=trace.learning_speed_at_ends(),
    )
    data["complexity"]["layers"][0]["type"] = rc.EVIL
    return data


def test_names_from_the_data_cannot_inject_markup() -> None:
    page = render_html(evil_everywhere())
    assert "<script" not in page.lower()
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    # title, header, summary, layers, evidence key and value, checkup and complexity tables
    assert page.count(escaped) >= 9
    assert len(images(page)) == 4  # the '$' in a layer name does not break matplotlib


def nan_diagnosis() -> dict[str, Any]:
    """A run whose loss and gradients went non-finite part way: NaN rows, then a stop."""
    trace, history = rc.probed_run(depth=3, steps=12)
    data = rc.diagnosis_dict(trace, history, findings=[])
    layers = data["trace"]["tables"]["layers"]
    for row in layers["grad_norm_weight"][6:9]:
        row[:] = [None] * len(row)
    for stat in ("grad_norm_weight", "grad_norm_bias"):  # layer 0 has no speed at the end
        for row in layers[stat][-SPEED_WINDOW:]:
            row[0] = None
    weight, bias = (
        np.array(layers[k], dtype=float) for k in ("grad_norm_weight", "grad_norm_bias")
    )
    speed = np.where(np.isnan(bias), weight, bias)
    data["learning_speed"] = {"layers": trace.layers, **speed_at_ends(speed, layers["steps"])}
    data["history"]["loss"][8:] = [None] * (len(data["history"]["loss"]) - 8)
    data["history"]["evals"][-1]["val_loss"] = None
    data["stopped"] = {"reason": "nonfinite_loss", "step": 8}
    return data


def test_nan_values_draw_as_marked_gaps_not_crashes(validator: Any) -> None:
    data = nan_diagnosis()
    assert not list(validator.iter_errors(data))
    page = render_html(data)
    assert len(images(page)) == 4
    assert "nonfinite_loss at step 8" in page
    # the gradient heatmap, then the learning speed (layer 0 at the end) and the loss curves
    notes = re.findall(r'<span class="muted">([^<]*)</span>', page)
    assert notes == [
        sentence(plots.HEATMAP_GAP_NOTE),
        sentence(plots.LINE_GAP_NOTE),
        sentence(plots.LINE_GAP_NOTE),
    ]


def test_reduce_grid_leaves_gaps_out_of_means_and_flags_them() -> None:
    rows = [[1.0, None], [None, None], [3.0, 4.0], [5.0, None], [7.0, 8.0], [9.0, 10.0]]
    red = plots.reduce_grid(rows, [0, 1, 2, 3, 4, 5], 2, max_rows=3)
    assert red.steps_per_row == 2
    assert (red.first_step, red.end_step, red.column_width()) == (0, 6, 2)
    np.testing.assert_allclose(red.values[:, 0], [1.0, 4.0, 8.0])
    assert math.isnan(red.values[0, 1]) and red.values[1, 1] == 4.0
    assert red.missing.tolist() == [[False, True], [False, False], [False, False]]
    assert red.partial.tolist() == [[True, False], [False, True], [False, False]]


def test_reduce_grid_spans_the_steps_recorded_every_16th() -> None:
    red = plots.reduce_grid([[0.1]] * 10, list(range(0, 160, 16)), 1, max_rows=5)
    assert (red.first_step, red.end_step, red.column_width()) == (0, 160, 32)


def test_reduce_grid_averages_gradients_in_log_space() -> None:
    rows = [[10.0], [1000.0], [1.0], [1.0]]
    red = plots.reduce_grid(rows, [0, 1, 2, 3], 1, max_rows=2, transform=np.log10)
    np.testing.assert_allclose(red.values[:, 0], [2.0, 0.0])  # geometric means 100 and 1


def test_zero_speed_is_a_stub_and_missing_speed_no_bar() -> None:
    heights = plots.bar_heights(np.array([0.0, np.nan, 1e-3]), floor=1e-4)
    assert heights[0] == 1e-4 and np.isnan(heights[1]) and heights[2] == 1e-3


def test_reduce_columns_and_line_keep_gaps_visible() -> None:
    red = plots.reduce_grid([[1.0, 3.0, None, None]], [0], 4, max_rows=10)
    red = plots.reduce_columns(red, 2)
    assert red.values[0, 0] == 2.0 and red.missing.tolist() == [[False, True]]
    x = np.arange(10.0)
    y = np.array([1, 1, 1, 1, np.nan, 1, 1, 1, 1, 1], dtype=float)
    xs, ys, per = plots.reduce_line(x, y, max_points=5)
    assert per == 2 and xs.tolist() == [0.5, 2.5, 4.5, 6.5, 8.5]
    assert np.isnan(ys[2]) and np.isfinite(np.delete(ys, 2)).all()


def test_huge_run_gives_a_small_page_and_says_it_was_downsampled(tmp_path: Path) -> None:
    data = rc.synthetic_diagnosis(100_000, 1_000)
    path = write_report(data, tmp_path / "report.html")
    size = path.stat().st_size
    assert 100_000 < size < MAX_PAGE_BYTES
    page = path.read_text()
    assert "Downsampled for drawing: each cell averages 167 recorded steps x 5 layers" in page
    assert "Dead units: downsampled for drawing" in page
    assert "Per-step loss: mean of 67 steps per point" in page
    assert len(images(page)) == 4
    # one step in 64 lacks the first 100 layers' gradients: flagged, never a blank cell
    assert sentence(plots.HEATMAP_PARTIAL_NOTE) in page
    assert plots.HEATMAP_GAP_NOTE[1:] not in page


# -- JSON: schema, save, load -------------------------------------------------------------------


def test_schema_vocabularies_match_the_code(validator: Any) -> None:
    defs = validator.schema["$defs"]
    assert defs["finding"]["properties"]["kind"]["enum"] == list(KINDS)
    assert defs["remedy"]["enum"] == list(REMEDIES)


@pytest.mark.parametrize("case", ["real_diagnosis", "checkup", "treatment", "synthetic"])
def test_result_dicts_validate_against_the_schema(
    case: str, diagnosis: dict[str, Any], validator: Any
) -> None:
    data = {
        "real_diagnosis": lambda: diagnosis,
        "checkup": rc.checkup_dict,
        "treatment": rc.treatment_dict,
        "synthetic": lambda: rc.synthetic_diagnosis(300, 7),
    }[case]()
    data = json.loads(json.dumps(data, allow_nan=False))  # exactly what save() writes
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(data)]
    assert errors == []
    assert data["healthy"] == (
        not any(f["severity"] in ("warning", "critical") for f in data["findings"])
    )


def test_schema_rejects_what_the_report_cannot_read(validator: Any) -> None:
    data = rc.checkup_dict()
    data["findings"][0]["kind"] = "slow_vibes"
    del data["schema_version"]
    messages = " ".join(e.message for e in validator.iter_errors(data))
    assert "'schema_version' is a required property" in messages
    assert "'slow_vibes' is not one of" in messages


def test_real_diagnose_result_validates_and_saves(tmp_path: Path, validator: Any) -> None:
    diagnose = pytest.importorskip("deepdoctor.diagnose", reason="diagnose has not landed")
    split = dd.data.load("digits", subset=300)
    model = dd.models.mlp(64, 10, depth=4, width=16, activation="sigmoid")
    result = diagnose.diagnose(model, split.train, split.val, steps=30, seed=0, batch_size=32)
    html_path = result.save(tmp_path)
    data = json.loads((tmp_path / "diagnosis.json").read_text())
    assert [f"{e.json_path}: {e.message}" for e in validator.iter_errors(data)] == []
    assert section_ids(html_path.read_text())[:2] == ["findings", "gradient-flow"]


def test_real_checkup_result_validates_and_renders(validator: Any) -> None:
    checkup = pytest.importorskip("deepdoctor.checkup", reason="checkup has not landed")
    split = dd.data.load("digits", subset=200)
    model = dd.models.mlp(64, 10, depth=6, width=16, activation="sigmoid")
    result = checkup.checkup(model, (split.train[0][:64], split.train[1][:64]))
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert [f"{e.json_path}: {e.message}" for e in validator.iter_errors(data)] == []
    page = render_html(data)
    assert section_ids(page) == ["findings", "checkup", "complexity"]
    assert f"{data['complexity']['total']['params']:,}" in page


BUDGET_LEFT = (
    "the budget left (0.8 runs) is less than this screen and its verification need (1.2 runs)"
)


def test_real_treatment_to_dict_validates_and_renders(validator: Any) -> None:
    treat = pytest.importorskip("deepdoctor.treat", reason="treat has not landed")
    import torch

    from deepdoctor.experiment import Experiment

    split = dd.data.load("digits", subset=200)
    experiment = Experiment(lambda: dd.models.mlp(64, 10, depth=2), split.train, steps=4)
    history = dd.History(
        task="classification",
        steps=2,
        loss=[2.3, 2.2],
        evals=[{"step": 2.0, "train_loss": 2.2, "train_accuracy": 0.2}],
    )
    metrics = {"train_loss": 0.5, "train_accuracy": 0.9}
    result = treat.Treatment(
        applied=["adam"],
        before={"train_loss": 2.2, "train_accuracy": 0.2},
        after=metrics,
        trials=[
            treat.Trial(
                ["adam"],
                "verify",
                "kept",
                steps=4,
                metrics=metrics,
                score=0.9,
                baseline_score=0.2,
            ),
            treat.Trial(["he_init"], "screen", "not_tried", reason=BUDGET_LEFT),
            treat.Trial(["adam"], "screen", "error", round=2, error="RuntimeError: boom"),
        ],
        model=torch.nn.Linear(2, 2),
        findings=[],
        findings_before=[],
        noise=0.01,
        compute=2.0,
        message="kept adam",
        experiment=experiment,
        treated=experiment,
        history_before=history,
        history_after=history,
    )
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert [f"{e.json_path}: {e.message}" for e in validator.iter_errors(data)] == []
    page = render_html(data)
    assert "verified and kept: training accuracy 90.0% vs 20.0% untreated, +70.0 points" in page
    assert f"<td>not tried: {BUDGET_LEFT}</td>" in page
    assert "<td>screen (round 2)</td>" in page and "<td>failed: RuntimeError: boom</td>" in page
    assert [t["status"] for t in data["trials"]] == ["kept", "not_tried", "error"]


class _Saved(Result):
    result_type = "checkup"

    def __init__(self) -> None:
        self.findings = []

    def to_dict(self) -> dict[str, Any]:
        return {**rc.checkup_dict(), **super().to_dict()}


def test_result_save_writes_json_and_the_page_it_re_renders_from(tmp_path: Path) -> None:
    html_path = _Saved().save(tmp_path)
    assert html_path == tmp_path / "report.html"
    data = load_result(tmp_path / "checkup.json")
    assert data["healthy"] is True and data["findings"] == []
    assert render_html(data) == html_path.read_text()


def test_check_result_names_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="schema 'deepdoctor.lab'.*expected one of"):
        check_result({"schema": "deepdoctor.lab", "schema_version": 1})
    with pytest.raises(ValueError, match="version 2, but this deepdoctor reads versions 1 to 1"):
        check_result({"schema": "deepdoctor.checkup", "schema_version": 2, "findings": []})
    with pytest.raises(ValueError, match="expected a JSON object, got list"):
        check_result([1, 2])


# -- the command --------------------------------------------------------------------------------


def test_report_command_re_renders_a_saved_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "treatment.json"
    src.write_text(json.dumps(rc.treatment_dict()))
    out = tmp_path / "elsewhere"
    assert main(["report", str(src), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Treatment of sigmoid-mlp50-digits: healthy" in text
    assert f"wrote {out / 'report.html'}" in text.replace("\n", "")
    assert (out / "report.html").read_text() == render_html(rc.treatment_dict())
    assert main(["report", str(src), "--quiet"]) == 0
    assert (tmp_path / "report.html").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no result file at"),
        ('{"schema": ', "is not valid JSON"),
        ('{"schema": "deepdoctor.diagnosis", "schema_version": 9}', "reads versions 1 to 1"),
        ('{"schema": "mystery", "schema_version": 1}', "which deepdoctor cannot draw"),
        (
            '{"schema": "deepdoctor.diagnosis", "schema_version": 1, "findings": [], '
            '"trace": "oops"}',
            "does not have the layout",
        ),
    ],
)
def test_report_command_exits_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    path = tmp_path / "result.json"
    if content is not None:
        path.write_text(content)
    assert main(["report", str(path)]) == 2
    assert message in capsys.readouterr().err.replace("\n", "")
    assert not (tmp_path / "report.html").exists()


def test_a_treatment_headline_says_first_whether_it_repaired_the_run() -> None:
    from deepdoctor.report import facts

    warning = {"kind": "stalled_loss", "severity": "warning"}
    critical = {"kind": "nonfinite", "severity": "critical"}
    treated = {"schema": "deepdoctor.treatment"}
    assert facts.headline({**treated, "verdict": "repaired", "findings": []}) == "repaired"
    assert (
        facts.headline({**treated, "verdict": "partly repaired", "findings": [warning, warning]})
        == "partly repaired: 2 problems (2 warnings) left"
    )
    assert (
        facts.headline({**treated, "verdict": "not repaired", "findings": [critical]})
        == "not repaired: 1 problem (1 critical) left"
    )

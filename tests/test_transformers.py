"""The Hugging Face Trainer callback on a GPT-2 built from a tiny config (no download):
each step's loss and gradient norm against the Trainer's own log of them, gradient
accumulation, the vocabulary not read as imbalanced classes, a run with no step."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is an optional extra")

from deepdoctor.integrations.transformers import DeepDoctorCallback  # noqa: E402
from deepdoctor.integrations.watch import NO_STEP  # noqa: E402

VOCAB, T = 40, 8


def _gpt2() -> Any:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=T, n_embd=16, n_layer=2, n_head=2
    )
    return transformers.GPT2LMHeadModel(config)


def _rows(n: int = 32) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (n, T), generator=g)
    return [{"input_ids": ids[i], "labels": ids[i]} for i in range(n)]


def _train(tmp_path: Path, callback: DeepDoctorCallback, rows: list, **options: Any) -> Any:
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        max_grad_norm=1e9,  # the norm is computed and logged, the gradients left as they are
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        **options,
    )
    trainer = transformers.Trainer(
        model=_gpt2(), args=args, train_dataset=rows, callbacks=[callback]
    )
    trainer.train()
    return trainer


def test_the_trainers_own_loss_and_gradient_norm(tmp_path: Path) -> None:
    cb = DeepDoctorCallback(every=1, report_dir=tmp_path / "report")
    trainer = _train(tmp_path, cb, _rows(), max_steps=4, gradient_accumulation_steps=2)
    logged = [h for h in trainer.state.log_history if "grad_norm" in h]
    trace = cb.trace
    assert trace is not None and trace.n_steps == 4 == len(logged)
    # the Trainer logs each step's loss (rounded to 4 decimals) and its gradient norm
    assert list(trace.loss()) == pytest.approx([h["loss"] for h in logged], abs=2e-4)
    totals = trace.steps.array("grad_norm_total")[:, 0]
    assert list(totals) == pytest.approx([h["grad_norm"] for h in logged], rel=1e-4)
    assert math.log(VOCAB) - 0.5 < trace.loss()[0] < math.log(VOCAB) + 0.5
    # layer names of the model itself; the tied output layer counted once
    assert trace.layers[0] == "transformer.wte" and "lm_head" not in trace.layers
    facts = trace.facts
    assert facts.targets_per_position and facts.n_classes == VOCAB
    assert sum(facts.class_counts) == 4 * 2 * 4 * T  # every label position of 4 steps
    assert "class_imbalance" not in {f.kind for f in cb.findings}
    assert (tmp_path / "report" / "report.html").exists()
    assert "deepdoctor/problems" in trainer.state.log_history[-1]


def test_a_run_with_no_step_says_so(tmp_path: Path) -> None:
    cb = DeepDoctorCallback()
    with pytest.warns(UserWarning, match="before its first optimizer step"):
        _train(tmp_path, cb, _rows(8), num_train_epochs=0)
    assert cb.findings == [] and cb.message == NO_STEP


def test_the_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import runpy
    import sys

    example = Path(__file__).parent.parent / "examples" / "hf_trainer_callback.py"
    monkeypatch.setattr(sys, "argv", [str(example), str(tmp_path)])
    found = runpy.run_path(str(example), run_name="__main__")["doctor"]
    assert found.trace.n_steps == 20 and found.trace.layers[0] == "transformer.wte"
    assert math.isfinite(found.trace.loss()[-1]) and (tmp_path / "report.html").exists()

"""The Lightning callback: each step's own gradients and loss (recounted in plain PyTorch
inside the LightningModule), with gradient accumulation and with manual optimisation; the
report, the logger, and a run that takes no step."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning.pytorch", reason="lightning is an optional extra")

from deepdoctor.integrations.lightning import DeepDoctorCallback  # noqa: E402
from deepdoctor.integrations.watch import NO_STEP  # noqa: E402


def _loader(n: int = 64, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(X, y), batch_size=batch_size, shuffle=False)


class Recounting(L.LightningModule):
    """An MLP whose training_step calls its layers (not self.forward), recording what the
    optimizer sees by hand: the weight-gradient norms, and every micro-batch's loss."""

    def __init__(self, manual: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        self.automatic_optimization = not manual
        self.grad_norms: list[list[float]] = []
        self.losses: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.losses.append(float(loss.detach()))
        if self.automatic_optimization:
            return loss
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        self.grad_norms.append(self._norms())
        opt.step()
        return None

    def _norms(self) -> list[float]:
        return [float(self.net[i].weight.grad.norm()) for i in (0, 2)]

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        if self.automatic_optimization:
            self.grad_norms.append(self._norms())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)


def _trainer(tmp_path: Path, callback: DeepDoctorCallback, **options: Any) -> Any:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=L.loggers.CSVLogger(tmp_path, name="logs"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        **options,
    )


def test_automatic_with_accumulation(tmp_path: Path) -> None:
    module = Recounting()
    cb = DeepDoctorCallback(every=1, report_dir=tmp_path / "report")
    _trainer(tmp_path, cb, max_steps=4, accumulate_grad_batches=2).fit(module, _loader())
    trace = cb.trace
    assert trace is not None and trace.n_steps == 4
    assert trace.layers == ["net.0", "net.2"]
    torch.testing.assert_close(
        torch.tensor(trace.grad_norms()).float(), torch.tensor(module.grad_norms), rtol=1e-5, atol=0
    )
    # a step's loss: the mean of its two micro-batches' losses
    pairs = [sum(module.losses[2 * i : 2 * i + 2]) / 2 for i in range(4)]
    assert list(trace.loss()) == pytest.approx(pairs, rel=1e-5)
    # the forward was observed though training_step bypasses forward(): the ReLU's stats
    assert len(trace.acts) == 4 and not math.isnan(trace.acts.array("dead_frac")[0, 0])
    assert trace.facts.task == "classification" and sum(trace.facts.class_counts) == 64
    assert isinstance(cb.findings, list) and cb.diagnosis is not None
    assert (tmp_path / "report" / "report.html").exists()
    text = next((tmp_path / "logs").rglob("metrics.csv")).read_text()
    rows = list(csv.DictReader(text.splitlines()))
    assert float(rows[-1]["deepdoctor/problems"]) == sum(f.is_problem for f in cb.findings)


def test_manual_optimisation(tmp_path: Path) -> None:
    module = Recounting(manual=True)
    cb = DeepDoctorCallback()
    _trainer(tmp_path, cb, max_steps=5).fit(module, _loader())
    trace = cb.trace
    assert trace is not None and trace.n_steps == 5
    torch.testing.assert_close(
        torch.tensor(trace.grad_norms()).float(), torch.tensor(module.grad_norms), rtol=1e-5, atol=0
    )
    assert list(trace.loss()) == pytest.approx(module.losses, rel=1e-5)


def test_a_run_with_no_step_says_so(tmp_path: Path) -> None:
    cb = DeepDoctorCallback()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(tmp_path, cb, max_steps=3, limit_train_batches=0).fit(Recounting(), _loader())
    assert cb.findings == [] and cb.message == NO_STEP
    assert any(NO_STEP in str(w.message) for w in caught)


def test_deepdoctor_imports_neither_framework() -> None:
    import subprocess
    import sys

    code = (
        "import sys, deepdoctor, deepdoctor.integrations; "
        "print(sorted(m for m in ('lightning', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    import runpy
    import sys

    example = Path(__file__).parent.parent / "examples" / "lightning_callback.py"
    monkeypatch.setattr(sys, "argv", [str(example), str(tmp_path)])
    found = runpy.run_path(str(example), run_name="__main__")["doctor"]
    assert found.trace.n_steps == 60 and found.findings
    printed = [
        ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(("info", "warn", "crit"))
    ]
    assert len(printed) == len(found.findings)
    assert (tmp_path / "report.html").exists()

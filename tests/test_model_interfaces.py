"""Real model interfaces: dict batches, several inputs, dict outputs with the model's own
loss, per-position targets with ignore_index, and the messages for targets that do not fit.

Expected losses are recomputed in plain PyTorch on the same weights and batch.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import deepdoctor as dd

VOCAB, T, N = 12, 6, 96


class TinyTagger(nn.Module):
    """A Hugging Face-shaped model: keyword inputs, a dict out, its own loss from labels."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.hidden = nn.Linear(16, 16)
        self.head = nn.Linear(16, VOCAB)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: Any = None
    ) -> dict[str, torch.Tensor]:
        h = torch.relu(self.hidden(self.embed(input_ids))) * attention_mask[..., None]
        logits = self.head(h)
        out = {"logits": logits}
        if labels is not None:
            # label smoothing: a loss of its own, told apart from deepdoctor's default
            out["loss"] = nn.functional.cross_entropy(
                logits.transpose(1, 2), labels, label_smoothing=0.2
            )
        return out


class Records(Dataset):
    def __init__(self, rows: list[dict[str, torch.Tensor]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.rows[i]


def _tokens() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    # a skewed vocabulary: token 0 is by far the most frequent, as in text
    ids = torch.where(
        torch.rand(N, T, generator=g) < 0.7, 0, torch.randint(1, VOCAB, (N, T), generator=g)
    )
    mask = torch.ones(N, T, dtype=torch.long)
    mask[:, -2:] = 0  # the last two positions are padding
    labels = ids.roll(1, dims=1).clone()
    labels[mask == 0] = -100
    return ids, mask, labels


def _dict_loader() -> DataLoader:
    ids, mask, labels = _tokens()
    rows = [{"input_ids": ids[i], "attention_mask": mask[i], "labels": labels[i]} for i in range(N)]
    return DataLoader(Records(rows), batch_size=32)


def test_dict_batches_use_the_models_own_loss() -> None:
    torch.manual_seed(0)
    model = TinyTagger()
    ids, mask, labels = _tokens()
    first = model(ids[:32], mask[:32], labels[:32])["loss"].item()
    diag = dd.diagnose(model, _dict_loader(), steps=6, reference=False)
    assert diag.trace.loss()[0] == pytest.approx(first, rel=1e-5)
    facts = diag.trace.facts
    # class counts over the positions that count: the padded ones (-100) are left out
    assert sum(facts.class_counts) == int((labels != -100).sum()) == N * (T - 2)
    assert facts.class_counts[0] == int((labels == 0).sum())
    assert facts.targets_per_position is True
    # the vocabulary is Zipf-skewed (token 0 over 20x the rarest) and is not "imbalanced"
    counts = [c for c in facts.class_counts if c]
    assert max(counts) / min(counts) > 10
    assert "class_imbalance" not in {f.kind for f in diag.findings}


def test_checkup_on_a_dict_batch_and_per_position_targets() -> None:
    torch.manual_seed(0)
    model = TinyTagger()
    ids, mask, labels = _tokens()
    batch = {"input_ids": ids[:32], "attention_mask": mask[:32], "labels": labels[:32]}
    chk = dd.checkup(model, batch)
    expected = model(ids[:32], mask[:32], labels[:32])["loss"].item()
    assert chk.loss["value"] == pytest.approx(expected, rel=1e-5)
    assert chk.loss["expected"] == pytest.approx(math.log(VOCAB))
    # a loss_fn given is used instead, on (batch, time, classes) outputs
    plain = nn.functional.cross_entropy(
        model(ids[:32], mask[:32])["logits"].transpose(1, 2), labels[:32]
    ).item()
    assert abs(plain - expected) > 0.01
    given = dd.checkup(model, batch, loss_fn=nn.CrossEntropyLoss())
    assert given.loss["value"] == pytest.approx(plain, rel=1e-5)


def test_a_missing_forward_argument_is_named() -> None:
    ids, _, labels = _tokens()
    batch = {"input_ids": ids[:8], "labels": labels[:8]}
    with pytest.raises(ValueError, match=r"needs the argument 'attention_mask'.*input_ids, labels"):
        dd.checkup(TinyTagger(), batch)


class MaskedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x * keep)))


def test_several_inputs_in_a_tuple() -> None:
    g = torch.Generator().manual_seed(3)
    x, keep = torch.randn(128, 8, generator=g), (torch.rand(128, 8, generator=g) > 0.2).float()
    y = torch.randint(0, 3, (128,), generator=g)
    loader = DataLoader([((x[i], keep[i]), y[i]) for i in range(128)], batch_size=32, shuffle=False)
    torch.manual_seed(0)
    model = MaskedMLP()
    first = nn.functional.cross_entropy(model(x[:32], keep[:32]), y[:32]).item()
    diag = dd.diagnose(model, loader, steps=4, reference=False)
    assert diag.trace.loss()[0] == pytest.approx(first, rel=1e-5)
    assert diag.history.final["train_accuracy"] >= 0  # evaluated on both inputs
    chk = dd.checkup(model, ((x[:32], keep[:32]), y[:32]))
    assert chk.loss["value"] == pytest.approx(first, rel=1e-5)


def test_targets_that_do_not_fit_name_the_fix() -> None:
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    net = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"floats .*3 outputs per target.*y\.long\(\)"):
        dd.checkup(net, (X, y.float()))
    one_hot = nn.functional.one_hot(y, 3).float()
    with pytest.raises(ValueError, match=r"one-hot.*y\.argmax\(1\).*nn\.MSELoss\(\)"):
        dd.diagnose(net, (X, one_hot), steps=2)
    # said explicitly, one-hot rows train as regression targets
    dd.checkup(net, (X, one_hot), loss_fn=nn.MSELoss())


def test_tensor_dataset_of_three_is_inputs_and_targets() -> None:
    X, y = torch.randn(40, 4), torch.randint(0, 2, (40,))
    loader = DataLoader(TensorDataset(X, y), batch_size=20)
    chk = dd.checkup(nn.Linear(4, 2), loader)
    assert chk.meta["batch_size"] == 20

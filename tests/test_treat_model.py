"""The model treat hands back takes the inputs the user holds, and its "after" is measured
on it: here by plain PyTorch, not by deepdoctor's own evaluation."""

from __future__ import annotations

import torch

import deepdoctor as dd
from deepdoctor.remedies.data import StandardizedInputs


def test_a_kept_input_standardisation_travels_inside_the_returned_model() -> None:
    split = dd.data.load("digits")
    raw_train = (split.train[0] * 16 + 40, split.train[1])  # pixels offset and scaled up
    raw_val = (split.val[0] * 16 + 40, split.val[1])
    exp = dd.Experiment(
        dd.models.spec("mlp", in_features=64, n_classes=10, depth=2, width=32),
        raw_train,
        raw_val,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
        steps=200,
    )
    tr = dd.treat(exp, remedies=["standardize_inputs"])
    assert tr.applied == ["standardize_inputs"]
    assert isinstance(tr.model, StandardizedInputs)
    model = tr.model.eval()
    with torch.no_grad():
        accuracy = float((model(raw_val[0]).argmax(1) == raw_val[1]).float().mean())
    assert abs(accuracy - tr.after["val_accuracy"]) < 1e-6  # the same model, the same data
    assert accuracy > tr.before["val_accuracy"] + 0.3  # measured 10.0% -> 81.9%

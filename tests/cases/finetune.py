"""Fine-tuning families (issue 15, item 8): a model pretrained on classes 0-4, its head left
out of the checkpoint (a new one drawn from the seed), fine-tuned on classes 5-9 relabelled
0-4. ``pretrained=`` is the loaded state dict, as a user who loaded a checkpoint would pass
it. Imported at the end of ``tests/cases/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import torch
from torch import nn

from deepdoctor import data, models
from deepdoctor.experiment import Experiment

from . import adam, case, digits, exp, mnist1d

PRETRAIN_STEPS = 300  # Adam 1e-3: 0.99 (digits) and 0.8+ (MNIST-1D) accuracy on classes 0-4
HALF = 5  # classes 0-4 pretrain, 5-9 fine-tune


def _builders() -> dict[str, Callable[[], nn.Module]]:
    return {
        "digits/mlp": lambda: models.mlp(64, HALF, depth=2, width=128),
        "mnist1d/cnn": lambda: models.cnn((1, 40), HALF, depth=3, width=32),
    }


def _split(family: str) -> data.Split:
    return digits() if family == "digits/mlp" else mnist1d(flatten=False)


@cache
def pretrained(family: str) -> dict[str, torch.Tensor]:
    """The body's weights after pretraining on classes 0-4 (seed 0), the head's left out."""
    s = _split(family)
    keep = s.y_train < HALF
    X, y = s.X_train[keep], s.y_train[keep]
    torch.manual_seed(0)
    model = _builders()[family]()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(PRETRAIN_STEPS):
        idx = torch.randint(0, len(X), (64,), generator=g)
        loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {
        k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("out.")
    }


def finetune(
    family: str, optimizer: Callable[..., torch.optim.Optimizer], steps: int
) -> Experiment:
    """Fine-tune the pretrained body with a fresh head on classes 5-9 (as 0-4)."""
    s = _split(family)
    state, make = pretrained(family), _builders()[family]

    def build() -> nn.Module:
        model = make()  # the head is drawn from the experiment's seed
        model.load_state_dict(state, strict=False)
        return model

    tr, va = s.y_train >= HALF, s.y_val >= HALF
    train = (s.X_train[tr], s.y_train[tr] - HALF)
    val = (s.X_val[va], s.y_val[va] - HALF)
    e = exp(s, build, optimizer, steps, train=train, val=val, pretrained=state)
    e.n_classes = HALF
    return e


@case("healthy-finetune-mlp-digits", family="digits/mlp", healthy=True)
def _healthy_finetune_digits() -> Experiment:
    """Pretrained 2-layer MLP, new head, fine-tuned with Adam 1e-3: the body drifts 0.11 of
    its norm in 10 steps (plain PyTorch, seeds 0-2) and keeps the pretraining task. 300
    steps: the validation loss is at its lowest (600 steps: +4%, +4%, +10% at seeds 0-2;
    at 150 steps twice the steps still cut it by 8-18%)."""
    return finetune("digits/mlp", adam(1e-3), steps=300)


@case(
    "pretrained-drift-mlp-digits",
    family="digits/mlp",
    expected=("pretrained_drift",),
    allowed=("overfitting",),
)
def _drift_digits() -> Experiment:
    """The same fine-tuning at Adam 3e-2: the body moves 1.7x its norm in 10 steps, and the
    pretraining task falls from 0.99 to 0.51-0.53 accuracy (detectors/transfer.py)."""
    return finetune("digits/mlp", adam(3e-2), steps=150)


@case(
    "pretrained-drift-cnn1d-mnist1d",
    family="mnist1d/cnn",
    expected=("pretrained_drift",),
    # twice the steps change the validation loss by -29%, +19%, +4% at seeds 0-2 (four
    # times: -35%, +12%, -26%): still improving at some seeds, by the measurement
    allowed=("overfitting", "still_improving"),
)
def _drift_mnist1d() -> Experiment:
    """A 3-layer 1-D CNN pretrained on MNIST-1D classes 0-4, fine-tuned on 5-9 at Adam 1e-2.

    Plain PyTorch, seeds 0-2: the largest layer drift after 10 steps is 0.44-0.47 (Adam 1e-3:
    0.05-0.06, 3e-3: 0.14), and a linear probe of the body's features on classes 0-4 falls
    from 0.87 (pretrained; a random body: 0.69) to 0.77-0.84 after 20 steps, where Adam 1e-3
    and 3e-3 keep 0.86-0.88 (Adam 3e-2: drift 1.31-1.36, probe 0.69-0.75, no better than a
    random body)."""
    return finetune("mnist1d/cnn", adam(1e-2), steps=150)

"""Data remedies: standardize_inputs, class_weights, data_augmentation."""

from __future__ import annotations

import torch
from torch import nn

from ..experiment import Experiment
from ..training import is_loader
from .base import Context, Prescription, Remedy, record_change

STD_FLOOR = 1e-6  # constant features (e.g. digits' blank border pixels) are left unscaled
# ... and no feature is scaled up by more than 1 / STD_FLOOR_TYPICAL times the typical
# (median) feature's scale: a pixel that is blank in all training images but a few has a
# tiny std, and dividing by it made the validation inputs 1e6 (raw digits, lr 0.01: 13%
# validation accuracy after standardising, 69% before). sklearn's StandardScaler leaves
# only exactly constant features unscaled, and has the same failure for near-constant ones.
STD_FLOOR_TYPICAL = 0.1
AUGMENT_NOISE = 0.1  # Gaussian jitter, in units of each feature's standard deviation
AUGMENT_SHIFT = 1  # images and signals move by up to one pixel / sample


def _tensors(exp: Experiment, remedy: str) -> tuple[torch.Tensor, torch.Tensor]:
    if is_loader(exp.train):
        raise Prescription(
            remedy, "the training data is a DataLoader; apply this in its Dataset or transform"
        )
    X, y = exp.train
    return X, y


def _standardize(exp: Experiment, ctx: Context) -> Experiment:
    X, y = _tensors(exp, "standardize_inputs")
    if not X.is_floating_point():
        raise Prescription(
            "standardize_inputs",
            "the inputs are not floating point (token ids?); nothing to standardise",
        )
    if is_loader(exp.val):
        # Scaling only the training data would evaluate the model on inputs it never saw.
        raise Prescription(
            "standardize_inputs",
            "the validation data is a DataLoader; scale it in its Dataset with the training "
            "data's mean and std, (X - mean) / std, as well as the training data",
        )
    mean = X.mean(0, keepdim=True)
    std = X.std(0, keepdim=True)
    floor = max(STD_FLOOR, STD_FLOOR_TYPICAL * float(std.median()))
    std = std.clamp_min(floor)
    val = None
    if exp.val is not None:
        Xv, yv = exp.val
        val = ((Xv - mean) / std, yv)
    return record_change(
        exp,
        "standardize_inputs",
        f"mean, std = X_train.mean(0), X_train.std(0).clamp_min({floor:.3g}); "
        "X = (X - mean) / std  # train statistics, for train and val",
        record={"inputs": {"mean": mean, "std": std}},
        train=((X - mean) / std, y),
        val=val,
    )


class StandardizedInputs(nn.Module):
    """A model trained on ``(x - mean) / std``, taking raw ``x``: what treat hands back when
    standardize_inputs was kept, so ``Treatment.model(x)`` works on the inputs as the user
    holds them. ``model`` is the trained model itself (its state_dict is treated_model.pt)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone())

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> object:
        return self.model((x - self.mean) / self.std, *args, **kwargs)


def _class_weights(exp: Experiment, ctx: Context) -> Experiment:
    _, y = _tensors(exp, "class_weights")
    if y.is_floating_point():
        raise Prescription("class_weights", "targets are not class indices")
    if exp.loss_fn is not None and not isinstance(exp.loss_fn, nn.CrossEntropyLoss):
        raise Prescription(
            "class_weights",
            "the loss is not cross-entropy; weight its terms by inverse class frequency by hand",
        )
    # One weight per output: a class missing from the training labels still has a logit.
    counts = torch.bincount(y, minlength=exp.n_classes or 0).float().clamp_min(1)
    weight = counts.sum() / (len(counts) * counts)  # inverse frequency, mean weight 1
    return record_change(
        exp,
        "class_weights",
        "weight = counts.sum() / (len(counts) * counts); "
        "loss_fn = torch.nn.CrossEntropyLoss(weight=weight)",
        loss_fn=nn.CrossEntropyLoss(weight=weight),
    )


def jitter_and_shift(x: torch.Tensor) -> torch.Tensor:
    """Gaussian noise on every input, plus a random shift of up to one step for signals and
    images (inputs with a channel axis). Draws from torch's global RNG (seeded by train)."""
    out = x + AUGMENT_NOISE * x.std(0, keepdim=True) * torch.randn_like(x)
    if x.dim() >= 3:
        dims = tuple(range(2, x.dim()))
        shifts = tuple(
            int(s) for s in torch.randint(-AUGMENT_SHIFT, AUGMENT_SHIFT + 1, (len(dims),))
        )
        out = torch.roll(out, shifts=shifts, dims=dims)
    return out


def _augment(exp: Experiment, ctx: Context) -> Experiment:
    X, _ = _tensors(exp, "data_augmentation")
    if not X.is_floating_point():
        raise Prescription("data_augmentation", "inputs are token ids; augment them by hand")
    if exp.augment is not None:
        raise Prescription("data_augmentation", "the experiment already augments its data")
    return record_change(
        exp,
        "data_augmentation",
        "x = deepdoctor.remedies.data.jitter_and_shift(x)  # on each training batch",
        augment=jitter_and_shift,
    )


REMEDIES = [
    Remedy(
        "standardize_inputs",
        "data",
        "scale each input feature to zero mean, unit variance (training statistics)",
        _standardize,
    ),
    Remedy("class_weights", "data", "weight the loss by inverse class frequency", _class_weights),
    Remedy(
        "data_augmentation",
        "data",
        f"jitter inputs (noise {AUGMENT_NOISE} std) and shift signals/images by one step",
        _augment,
    ),
]

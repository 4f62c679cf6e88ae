"""The one deterministic training loop that diagnose, treat, the lab and the demo all use.

Same seed, same data, same model weights in -> same weights out, bit for bit: the global
torch RNG is seeded with ``seed`` (dropout), and the data order comes from its own generator
seeded with ``seed``. A non-finite loss stops the run cleanly (``History.stopped ==
"nonfinite_loss"``) before it can poison the weights; Ctrl-C stops it cleanly too
(``"interrupted"``) and keeps everything recorded so far.

Callbacks are objects with any of the methods ``on_train_start(state)``,
``on_after_backward(state)``, ``on_step_end(state)``, ``on_eval(state, metrics)`` and
``on_train_end(state)``; ``state.stop = "reason"`` asks the loop to stop after this step.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .batch import Inputs, as_inputs, call_model, model_loss, split_batch
from .checks import check_choice, check_int, check_number
from .progress import progress_bar
from .stats import IGNORE_INDEX, TargetTally, class_axis

Batch = tuple[torch.Tensor, torch.Tensor]
TensorData = tuple[torch.Tensor, torch.Tensor]
OptimizerSpec = torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] | None

DEFAULT_LR = 0.1  # plain SGD's customary starting point for standardised inputs
CLASS_COUNT_SAMPLES = 100_000  # count classes over at most this many samples of a loader
TRAIN_EVAL_SAMPLES = 2048  # the train metrics are measured on a fixed sample of this size
EVAL_CHUNK = 1024
# How the train metrics were measured (``RunFacts.train_metrics``), without / with batch norm:
# validation is always in eval mode, what users deploy.
TRAIN_METRICS = {
    False: "eval mode",
    True: "no grad, batch norm on batch statistics (running statistics restored)",
}
SCHEDULES = ("constant", "step", "cosine", "warmup", "warmup_cosine")
WARMUP_FRACTION = 0.1  # warmup schedules ramp the learning rate up over the first 10% of steps


# -- data ---------------------------------------------------------------------------------


def as_tensors(data: Any, name: str = "train") -> TensorData:
    """Check ``(X, y)`` and return it as tensors; a clear error for every way it can be wrong."""
    if not isinstance(data, tuple | list) or len(data) != 2:
        raise TypeError(
            f"{name} must be a DataLoader or a tuple (X, y) of tensors, got {type(data).__name__}"
        )
    X, y = as_inputs(data[0]), data[1]
    if not isinstance(X, torch.Tensor | Inputs):
        X = torch.as_tensor(np.asarray(X))
    if not isinstance(y, torch.Tensor):
        y = torch.as_tensor(np.asarray(y))
    if isinstance(X, Inputs):
        return _checked_inputs(X, y, name)
    if X.dim() == 0 or y.dim() == 0:
        raise ValueError(
            f"{name}: X and y must have a sample axis, got shapes "
            f"{tuple(X.shape)} and {tuple(y.shape)}"
        )
    if len(X) != len(y):
        raise ValueError(f"{name}: X has {len(X)} samples but y has {len(y)}; they must match")
    if len(X) == 0:
        raise ValueError(f"{name} is empty: X and y have no samples")
    for label, t in (("X", X), ("y", y)):
        if t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise ValueError(
                    f"{name}: {label} contains {bad} NaN or Inf values; remove or impute them "
                    "before training"
                )
    if X.dtype == torch.float64:
        X = X.float()
    return X, _targets(y)


def _targets(y: torch.Tensor) -> torch.Tensor:
    if y.dtype == torch.float64:
        y = y.float()
    if y.dtype in (torch.int32, torch.int16, torch.int8, torch.uint8):
        y = y.long()
    if not y.is_floating_point() and y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]  # a column of class indices, as pandas / sklearn often give them
    return y


def _checked_inputs(X: Inputs, y: torch.Tensor, name: str) -> tuple[Any, torch.Tensor]:
    """``as_tensors`` for several inputs: every tensor has the targets' sample count."""
    if y.dim() == 0 or not X.tensors():
        raise ValueError(f"{name}: the inputs and the targets must be tensors with a sample axis")
    for key, v in zip(X.keys, X.values(), strict=True):
        if isinstance(v, torch.Tensor) and (v.dim() == 0 or len(v) != len(y)):
            raise ValueError(
                f"{name}: input {key} has shape {tuple(v.shape)} but there are {len(y)} "
                "targets; every input needs one row per sample"
            )
    return X, _targets(y)


def is_loader(data: Any) -> bool:
    return isinstance(data, torch.utils.data.DataLoader)


def batches(data: Any, batch_size: int, seed: int) -> Iterator[Batch]:
    """An endless stream of mini-batches: epochs of a seeded permutation, or a cycled loader.

    With tensors, the last incomplete batch of an epoch is dropped when the data holds at
    least one full batch (so batch norm never sees a batch of one).
    """
    if is_loader(data):
        while True:
            empty = True
            for b in data:
                empty = False
                yield unpack_batch(b)
            if empty:
                raise ValueError("the training DataLoader yielded no batches")
    X, y = data
    n = len(X)
    g = torch.Generator().manual_seed(seed)
    size = min(batch_size, n)
    while True:
        perm = torch.randperm(n, generator=g)
        for start in range(0, n - size + 1, size):
            idx = perm[start : start + size]
            yield X[idx], y[idx]


def unpack_batch(batch: Any) -> Batch:
    """(inputs, targets) of a loader's batch; see ``deepdoctor.batch`` for the forms."""
    x, y = split_batch(batch)
    return x, _targets(y) if isinstance(y, torch.Tensor) else y


def loader_tensors(
    data: Any, limit: int | None = None, max_seconds: float | None = None
) -> TensorData:
    """Materialise up to ``limit`` samples of a loader or tensor pair (for evaluation).

    max_seconds: give up on a loader that has not yielded them within that time
    (``TimeoutError``, saying how many it had).
    """
    if not is_loader(data):
        X, y = data
        return (X[:limit], y[:limit]) if limit else (X, y)
    deadline = None if max_seconds is None else time.perf_counter() + max_seconds
    xs, ys, count = [], [], 0
    for b in data:
        x, t = unpack_batch(b)
        xs.append(x)
        ys.append(t)
        count += len(x)
        if limit and count >= limit:
            break
        if deadline is not None and time.perf_counter() > deadline:
            raise TimeoutError(f"the DataLoader yielded {count} rows in {max_seconds:g} s")
    if not xs:
        raise ValueError("the DataLoader yielded no batches")
    X = Inputs.cat(xs) if isinstance(xs[0], Inputs) else torch.cat(xs)
    y = torch.cat(ys)
    return (X[:limit], y[:limit]) if limit else (X, y)


# -- task, loss, outputs ------------------------------------------------------------------


def infer_task(y: torch.Tensor, loss_fn: Any) -> str:
    """classification (class indices), binary (float targets, BCE) or regression.

    One-hot targets with no loss function given are an error that says what to pass: read
    as regression values they would train by MSE and end in a misleading "underfitting".
    """
    if isinstance(loss_fn, nn.BCEWithLogitsLoss | nn.BCELoss):
        return "binary"
    if not y.is_floating_point():
        return "classification"
    if loss_fn is None and _one_hot(y):
        raise ValueError(
            f"the targets are one-hot rows of shape {tuple(y.shape)}: pass class indices "
            "(y.argmax(1)) for a classification, or loss_fn=nn.MSELoss() to fit them as "
            "regression values"
        )
    return "regression"


def _one_hot(y: torch.Tensor) -> bool:
    if y.dim() != 2 or y.shape[1] < 2 or not len(y):
        return False
    return bool((((y == 0) | (y == 1)).all(1) & (y.sum(1) == 1)).all())


def targets_for(y: torch.Tensor, task: str) -> torch.Tensor:
    """Binary 0/1 targets as floats, which BCE-with-logits needs; others unchanged."""
    return y.float() if task == "binary" and not y.is_floating_point() else y


def default_loss(y: torch.Tensor) -> nn.Module:
    return nn.MSELoss() if y.is_floating_point() else nn.CrossEntropyLoss()


def logits_of(output: Any) -> torch.Tensor:
    """The prediction tensor of a forward's output.

    A tuple or list gives its first element (the HuggingFace convention); a dict its
    ``logits`` (or ``out`` / ``output``) entry; anything else is an error that says so.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, dict):
        for key in ("logits", "out", "output"):
            if isinstance(output.get(key), torch.Tensor):
                return output[key]
        raise TypeError(
            f"the model returned a dict with keys {sorted(output)}; deepdoctor reads the "
            "prediction from 'logits' (or 'out' / 'output'): return one of those"
        )
    raise TypeError(
        f"the model returned {type(output).__name__}; return a tensor of predictions "
        "(or a tuple whose first element is one)"
    )


@dataclass
class LabelCheck:
    """The class-range check of a batch's labels, measured but not read yet: ``ends`` (the
    smallest and largest label that counts) on the device, judged by ``check`` once read.
    The checkup reads them with its step's norms; until then the loss sees ``in_range``."""

    ends: torch.Tensor
    n_out: int

    def in_range(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` with its labels clamped to the outputs, so that a wrong label cannot fail
        inside the loss before ``check`` names it (on a GPU, a device-side assert). The same
        values whenever ``check`` passes."""
        return torch.where(y == IGNORE_INDEX, y, y.clamp(0, self.n_out - 1))

    def check(self, ends: Sequence[float]) -> None:
        check_labels(int(ends[0]), int(ends[1]), self.n_out)


def label_ends(y: torch.Tensor) -> torch.Tensor:
    """The smallest and the largest class label over the positions that count (-100 does
    not), as one tensor on the device: read them together, in one host sync. When none
    counts, the largest integer and -1, which every check passes."""
    counted = y != IGNORE_INDEX
    low = torch.where(counted, y, torch.iinfo(y.dtype).max).amin()
    return torch.stack([low, torch.where(counted, y, -1).amax()])


def check_labels(low: int, top: int, n_out: int) -> None:
    """Class labels must run from 0 to the number of outputs - 1."""
    if low < 0:
        raise ValueError(
            f"the targets contain class {low}; class indices run from 0 to classes - 1 "
            f"(and {IGNORE_INDEX} marks a position that does not count)"
        )
    if top >= n_out:
        raise ValueError(
            f"the model has {n_out} outputs but the targets contain class {top}: the last "
            f"layer needs at least {top + 1} outputs"
        )


def fit_output(
    out: torch.Tensor, y: torch.Tensor, task: str, deferred: list[LabelCheck] | None = None
) -> torch.Tensor:
    """Check that predictions fit the targets; squeeze a trailing 1 for scalar targets.

    deferred: a list to which the class-range check is appended unread (``LabelCheck``),
    instead of being read and judged here."""
    if task == "classification":
        axis = class_axis(out.shape, y.shape)
        if axis is None:
            raise ValueError(
                f"the model's output has shape {tuple(out.shape)} but the targets are class "
                f"indices of shape {tuple(y.shape)}: the output needs shape (batch, classes), "
                "or (batch, time, classes) for per-position targets (batch, time)"
            )
        labels = LabelCheck(label_ends(y), out.shape[axis]) if y.numel() else None
        if labels is not None and deferred is not None:
            deferred.append(labels)
        elif labels is not None:
            labels.check(labels.ends.tolist())  # one host sync for both ends
        return out
    if out.dim() == y.dim() + 1 and out.shape[-1] == 1:
        out = out.squeeze(-1)
    if out.shape != y.shape:
        if task == "regression" and class_axis(out.shape, y.shape) is not None:
            raise ValueError(
                f"the targets are floats of shape {tuple(y.shape)}, read as regression "
                f"values, but the model gives {out.shape[-1]} outputs per target, as a "
                "classifier does: pass the class labels as integers (y.long()), or make the "
                "output one value per target for a regression"
            )
        raise ValueError(
            f"the model's output has shape {tuple(out.shape)} but the targets have shape "
            f"{tuple(y.shape)}; they must match for {task}"
        )
    return out


def class_last(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-position predictions (batch, time, classes) as torch's losses take them, the
    classes on axis 1; any other prediction unchanged."""
    if out.dim() > 2 and class_axis(out.shape, y.shape) == out.dim() - 1:
        return out.movedim(-1, 1)
    return out


def compute_loss(
    loss_fn: Callable[..., torch.Tensor], out: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    if isinstance(loss_fn, nn.CrossEntropyLoss | nn.NLLLoss):
        out = class_last(out, y)  # ignore_index (-100 by default) drops padded positions
    loss = loss_fn(out, y)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(
            f"loss_fn returned {shape}, not a scalar; use a reduction such as reduction='mean'"
        )
    return loss.reshape(())


def forward_loss(
    model: nn.Module,
    x: Any,
    y: torch.Tensor,
    loss_fn: Callable[..., torch.Tensor],
    task: str,
    own_loss: bool = False,
    deferred: list[LabelCheck] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The prediction and the loss of one batch, and whether the prediction lines up with
    the targets (so that an accuracy means something).

    own_loss: use the loss the model computed itself when its output has one (a Hugging
    Face model given ``labels``), as when no ``loss_fn`` was given. Its per-position
    predictions may be aligned with the labels the model's own way (a causal language
    model predicts the next token), so they are not scored against the labels then.
    deferred: as for ``fit_output``; the caller reads and checks the labels' range later.
    """
    output = call_model(model, x)
    out = fit_output(logits_of(output), y, task, deferred)
    own = model_loss(output) if own_loss else None
    if own is not None:
        return out, own, out.dim() <= 2
    if deferred:
        y = deferred[-1].in_range(y)
    return out, compute_loss(loss_fn, out, y), True


def accuracy(out: torch.Tensor, y: torch.Tensor, task: str) -> float:
    """The fraction of right predictions, over the label positions that count."""
    if task == "regression":
        return math.nan
    counted = y != IGNORE_INDEX
    n = int(counted.sum())
    right = (predictions(out, task, y) == y) & counted
    return float(right.sum()) / n if n else math.nan


def batch_norm_layers(model: nn.Module) -> list[nn.Module]:
    """The batch-norm layers that keep running statistics."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def evaluate(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[..., Any],
    task: str,
    *,
    batch_stats: bool = False,
    own_loss: bool = False,
) -> tuple[float, float]:
    """Mean loss and accuracy (NaN for regression) in eval mode; see ``evaluate_metrics``."""
    m = evaluate_metrics(model, X, y, loss_fn, task, batch_stats=batch_stats, own_loss=own_loss)
    return m["loss"], m["accuracy"]


@torch.no_grad()
def evaluate_metrics(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[..., Any],
    task: str,
    *,
    batch_stats: bool = False,
    own_loss: bool = False,
) -> dict[str, float]:
    """Mean loss, accuracy and balanced accuracy (the mean of the per-class recalls over the
    classes present in ``y``; NaN for regression) in eval mode; the mode is restored.
    Balanced accuracy is what treat scores on imbalanced data, where plain accuracy rewards
    predicting the majority class.

    batch_stats: batch-norm layers normalise with each chunk's own statistics, as in
    training, instead of running statistics that early in a run have not converged (on a
    ResNet they gave a "training loss" of 1e4 against 6 per step); their running statistics
    are put back afterwards, so the run is not changed. Dropout stays off either way.
    own_loss: as for ``forward_loss``.
    """
    was_training = model.training
    model.eval()
    norms = batch_norm_layers(model) if batch_stats else []
    saved = [[b.clone() for b in m.buffers(recurse=False)] for m in norms]
    chunk = EVAL_CHUNK
    if norms:
        chunk = math.ceil(len(X) / math.ceil(len(X) / EVAL_CHUNK))  # no tiny last chunk
        for m in norms:
            m.train()
    try:
        total, n, aligned = 0.0, 0, True
        hits: dict[int, list[int]] = {}  # class -> [right, seen]
        for start in range(0, len(X), chunk):
            xb = X[start : start + chunk]
            yb = targets_for(y[start : start + chunk], task)
            out, loss, lined_up = forward_loss(model, xb, yb, loss_fn, task, own_loss)
            total += float(loss) * len(xb)
            aligned = aligned and lined_up
            if task != "regression" and aligned:
                _count_hits(hits, predictions(out, task, yb), yb)
            n += len(xb)
    finally:
        for m, buffers in zip(norms, saved, strict=True):
            for b, kept in zip(m.buffers(recurse=False), buffers, strict=True):
                b.copy_(kept)
        model.train(was_training)
    if task == "regression" or not hits or not aligned:
        return {"loss": total / n, "accuracy": math.nan, "balanced_accuracy": math.nan}
    right = sum(r for r, _ in hits.values())
    counted = sum(seen for _, seen in hits.values())  # label positions, -100 left out
    recalls = [r / seen for r, seen in hits.values()]
    return {
        "loss": total / n,
        "accuracy": right / counted,
        "balanced_accuracy": float(np.mean(recalls)),
    }


def predictions(out: torch.Tensor, task: str, y: torch.Tensor | None = None) -> torch.Tensor:
    """Predicted classes: the argmax of class logits (on the class axis of per-position
    predictions, given the targets ``y``), or a binary logit's sign."""
    if task != "classification":
        return (out > 0).to(out.dtype)
    return (class_last(out, y) if y is not None else out).argmax(1)


def _count_hits(hits: dict[int, list[int]], predicted: torch.Tensor, y: torch.Tensor) -> None:
    """Add each class's right predictions and samples of one chunk to ``hits`` (label
    positions marked ``IGNORE_INDEX`` do not count)."""
    labels = y.reshape(-1).long()
    right = predicted.reshape(-1) == y.reshape(-1)
    counted = labels != IGNORE_INDEX
    labels, right = labels[counted], right[counted]
    size = int(labels.max()) + 1 if labels.numel() else 1
    seen = torch.bincount(labels, minlength=size)
    correct = torch.bincount(labels[right], minlength=size)
    for c in torch.nonzero(seen).flatten().tolist():
        entry = hits.setdefault(c, [0, 0])
        entry[0] += int(correct[c])
        entry[1] += int(seen[c])


def _all_targets(data: Any) -> torch.Tensor:
    if is_loader(data):
        return loader_tensors(data, CLASS_COUNT_SAMPLES)[1]
    return data[1]


def data_facts(
    train_data: Any, loss_fn: Any, n_classes: int | None, prediction: torch.Size | None
) -> dict[str, Any]:
    """What the detectors need to know about the targets: the task, the classes and their
    counts over the training set (or the targets' variance), the chance-level loss.

    ``prediction``: the shape of the model's output on a few samples, from which the number
    of classes is read (the classes a model can predict, not only those the data holds).
    """
    y = _all_targets(train_data)
    tally = TargetTally(task=infer_task(y, loss_fn))
    if n_classes is not None:
        tally.n_classes = n_classes
    tally.add(y, prediction)
    return tally.facts()


# -- optimizer and schedule -----------------------------------------------------------------


def make_optimizer(optimizer: OptimizerSpec, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer is None:
        return torch.optim.SGD(params, lr=DEFAULT_LR)
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if callable(optimizer):
        # a factory that groups the parameters by module (remedies.transfer) takes the model
        takes_model = getattr(optimizer, "takes_model", False)
        opt = optimizer(params, model=model) if takes_model else optimizer(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(
                f"the optimizer factory returned {type(opt).__name__}; it must take the "
                "parameters and return a torch.optim.Optimizer, e.g. "
                "lambda p: torch.optim.Adam(p, lr=1e-3)"
            )
        return opt
    raise TypeError(
        f"optimizer must be a torch.optim.Optimizer or a function params -> optimizer, got "
        f"{type(optimizer).__name__}"
    )


def schedule_factor(
    schedule: str, steps: int, warmup_steps: int | None = None
) -> Callable[[int], float]:
    """Multiplier of the base learning rate at each step."""
    check_choice("schedule", schedule, SCHEDULES)
    if warmup_steps is not None:
        warmup_steps = check_int("warmup_steps", warmup_steps, minimum=1)
    warm = warmup_steps if warmup_steps is not None else max(1, int(WARMUP_FRACTION * steps))

    def factor(step: int) -> float:
        if schedule == "constant":
            return 1.0
        if schedule == "step":  # /10 at half and three quarters of the run
            return 0.1 ** ((step >= steps // 2) + (step >= 3 * steps // 4))
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
        if step < warm:
            return (step + 1) / warm
        if schedule == "warmup":
            return 1.0
        rest = max(1, steps - warm)
        return 0.5 * (1 + math.cos(math.pi * min(step - warm, rest) / rest))

    return factor


# -- the loop -------------------------------------------------------------------------------


@dataclass
class History:
    """What a training run produced: per-step loss, evaluations, and how it ended."""

    task: str
    steps: int = 0
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    clipped: list[bool] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    stopped: str = "completed"  # completed | nonfinite_loss | early_stopping | interrupted | ...
    stop_step: int | None = None
    best_step: int | None = None

    @property
    def final(self) -> dict[str, float]:
        """The metrics of the model the run returns (train_loss, val_loss, accuracies): the
        last evaluation's, or, when early stopping restored the best weights, the best
        step's."""
        if self.stopped == "early_stopping" and self.best_step is not None:
            for e in self.evals:
                if e["step"] == self.best_step:
                    return dict(e)
        return dict(self.evals[-1]) if self.evals else {}

    def metric(self, name: str) -> list[float]:
        return [e.get(name, math.nan) for e in self.evals]

    def to_dict(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, list):
                return [clean(x) for x in v]
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return v

        return clean(
            {
                "task": self.task,
                "steps": self.steps,
                "loss": self.loss,
                "lr": self.lr,
                "grad_norm": self.grad_norm,
                "clipped": self.clipped,
                "evals": self.evals,
                "stopped": self.stopped,
                "stop_step": self.stop_step,
                "best_step": self.best_step,
            }
        )


@dataclass
class TrainState:
    """What callbacks see. Setting ``stop`` to a reason ends the run after this step."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    history: History
    step: int = 0
    loss: torch.Tensor | None = None
    batch: Batch | None = None
    stop: str | None = None


def _forward_loss(
    model: nn.Module, xb: Any, yb: torch.Tensor, loss_fn: Any, task: str, own_loss: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``forward_loss`` on a training batch; torch's own error gets the batch's shapes."""
    try:
        out, loss, _ = forward_loss(model, xb, yb, loss_fn, task, own_loss)
    except RuntimeError as exc:
        shape = xb.describe() if isinstance(xb, Inputs) else f"{tuple(xb.shape)} {xb.dtype}"
        raise ValueError(
            f"the model failed on a training batch X {shape} (targets "
            f"{tuple(yb.shape)} {yb.dtype}): {exc}. Check that the model's input size and "
            "dtype fit the data"
        ) from exc
    return out, loss


def locate_nonfinite(probe: Any, x: Any) -> dict[str, Any]:
    """``probe.locate_nonfinite`` on a batch's inputs, whatever their form."""
    if isinstance(x, Inputs):
        return dict(probe.locate_nonfinite(*x.args, **x.kwargs))
    return dict(probe.locate_nonfinite(x))


def _call(callbacks: Sequence[Any], event: str, *args: Any) -> None:
    for cb in callbacks:
        fn = getattr(cb, event, None)
        if fn is not None:
            fn(*args)


def train(
    model: nn.Module,
    train: Any,
    val: Any = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    optimizer: OptimizerSpec = None,
    steps: int | None = 200,
    epochs: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    clip_grad: float | None = None,
    schedule: str = "constant",
    warmup_steps: int | None = None,
    eval_every: int | None = None,
    early_stopping: int | None = None,
    callbacks: Sequence[Any] = (),
    probe: Any = None,
    progress: bool | str = False,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> History:
    """Train ``model`` in place for ``steps`` optimizer steps (or ``epochs`` passes).

    train, val: a DataLoader or a tuple (X, y). loss_fn: default cross-entropy for integer
    targets, MSE otherwise. optimizer: an instance, or a factory ``params -> optimizer``;
    default ``SGD(lr=0.1)``. clip_grad: clip the total gradient norm to this value.
    schedule: constant, step, cosine, warmup or warmup_cosine. eval_every: evaluate train and
    validation metrics every so many steps (default: 10 times per run) and at the end.
    early_stopping: stop after this many evaluations without a better validation loss, and
    restore the best weights. probe: a ``Probe`` attached to ``model``; the loop tells it the
    loss and the evaluations. progress: show a progress bar (text is its label).
    augment: a function applied to each training input batch (drawing from torch's global
    RNG, which the loop seeds, so augmented runs stay deterministic).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            "the model has no trainable parameters (none at all, or every one has "
            "requires_grad=False), so there is nothing to train; give it layers with weights "
            "or unfreeze some"
        )
    batch_size = check_int("batch_size", batch_size, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    if clip_grad is not None:
        clip_grad = check_number("clip_grad", clip_grad, positive=True)
    if not is_loader(train):
        train = as_tensors(train, "train")
    if val is not None and not is_loader(val):
        val = as_tensors(val, "val")
    if epochs is not None:
        epochs = check_int("epochs", epochs, minimum=1)
        per_epoch = len(train) if is_loader(train) else max(1, len(train[0]) // batch_size)
        steps = epochs * per_epoch
    if steps is None:
        raise ValueError("give steps or epochs")
    steps = check_int("steps", steps, minimum=1)
    eval_every = check_int(
        "eval_every", max(1, steps // 10) if eval_every is None else eval_every, minimum=1
    )
    if early_stopping is not None:
        early_stopping = check_int("early_stopping", early_stopping, minimum=1)

    torch.manual_seed(seed)
    run = _Run(model, train, val, loss_fn, optimizer, callbacks, probe, clip_grad, early_stopping)
    run.factor = schedule_factor(schedule, steps, warmup_steps)
    stream = batches(train, batch_size, seed)
    model.train()
    _call(callbacks, "on_train_start", run.state)
    label = progress if isinstance(progress, str) else "training"
    with progress_bar(steps, label, enabled=bool(progress)) as bar:
        try:
            for step in range(steps):
                xb, yb = next(stream)
                if not run.step(step, xb if augment is None else augment(xb), yb):
                    break
                bar.advance(loss=run.history.loss[-1])
                if ((step + 1) % eval_every == 0 or step + 1 == steps) and run.evaluate_and_judge(
                    step + 1
                ):
                    break
        except KeyboardInterrupt:
            run.history.stopped, run.history.stop_step = "interrupted", run.history.steps
    return run.finish()


class _Run:
    """One training run's state and its three moves: a step, an evaluation, the end."""

    def __init__(
        self,
        model: nn.Module,
        train: Any,
        val: Any,
        loss_fn: Callable[..., torch.Tensor] | None,
        optimizer: OptimizerSpec,
        callbacks: Sequence[Any],
        probe: Any,
        clip_grad: float | None,
        early_stopping: int | None,
    ) -> None:
        self.model, self.callbacks, self.probe = model, callbacks, probe
        self.clip_grad, self.early_stopping = clip_grad, early_stopping
        self.X_probe, self.y_probe = loader_tensors(train, TRAIN_EVAL_SAMPLES)
        self.task = infer_task(self.y_probe, loss_fn)
        self.own_loss = loss_fn is None  # a model that computes its own loss keeps it
        self.loss_fn = loss_fn if loss_fn is not None else default_loss(self.y_probe)
        self.val_tensors = loader_tensors(val) if val is not None else None
        # the train metrics the fit detectors read: batch-norm layers on batch statistics
        self.batch_stats = bool(batch_norm_layers(model))
        if probe is not None:
            probe.trace.facts.train_metrics = TRAIN_METRICS[self.batch_stats]
        self.opt = make_optimizer(optimizer, model)
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]
        self.factor: Callable[[int], float] = lambda step: 1.0
        self.history = History(task=self.task)
        self.state = TrainState(model=model, optimizer=self.opt, history=self.history)
        self.best_val, self.since_best = math.inf, 0
        self.best_state: dict[str, Any] | None = None

    def step(self, step: int, xb: torch.Tensor, yb: torch.Tensor) -> bool:
        """One optimizer step; False when the loss came out NaN or Inf (the run stops)."""
        state, history, opt = self.state, self.history, self.opt
        state.step = step
        for g, base in zip(opt.param_groups, self.base_lrs, strict=True):
            g["lr"] = base * self.factor(step)
        yb = targets_for(yb, self.task)
        state.batch = (xb, yb)
        _, loss = _forward_loss(self.model, xb, yb, self.loss_fn, self.task, self.own_loss)
        state.loss = loss
        value = float(loss.detach())
        if not math.isfinite(value):
            self._stop_at_nonfinite(step, value, xb)
            return False
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _call(self.callbacks, "on_after_backward", state)
        if self.clip_grad is not None:
            norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad))
            history.clipped.append(norm > self.clip_grad)
        else:
            norm = math.nan
        history.grad_norm.append(norm)
        opt.step()
        if self.probe is not None:
            self.probe.record_loss(value)
        history.loss.append(value)
        history.lr.append(float(opt.param_groups[0]["lr"]))
        history.steps = step + 1
        _call(self.callbacks, "on_step_end", state)
        if state.stop:
            history.stopped, history.stop_step = state.stop, step + 1
        return not state.stop

    def _stop_at_nonfinite(self, step: int, value: float, xb: torch.Tensor) -> None:
        self.history.loss.append(value)
        self.history.stopped, self.history.stop_step = "nonfinite_loss", step
        # This step has no gradients: drop the previous step's, so the probe does not record
        # them as this step's.
        self.opt.zero_grad(set_to_none=True)
        if self.probe is not None:
            self.probe.record_loss(value)
            self.probe.end_step()
            self.probe.trace.facts.nonfinite_at = {
                "step": step,
                **locate_nonfinite(self.probe, xb),
            }

    def evaluate(self, step: int) -> dict[str, float]:
        tl, ta = evaluate(
            self.model,
            self.X_probe,
            self.y_probe,
            self.loss_fn,
            self.task,
            batch_stats=self.batch_stats,
            own_loss=self.own_loss,
        )
        metrics = {"step": float(step), "train_loss": tl, "train_accuracy": ta}
        if self.val_tensors is not None:
            val = evaluate_metrics(
                self.model, *self.val_tensors, self.loss_fn, self.task, own_loss=self.own_loss
            )
            metrics.update(
                val_loss=val["loss"],
                val_accuracy=val["accuracy"],
                val_balanced_accuracy=val["balanced_accuracy"],
            )
        self.history.evals.append(metrics)
        if self.probe is not None:
            self.probe.record_eval(step=step, **{k: v for k, v in metrics.items() if k != "step"})
        _call(self.callbacks, "on_eval", self.state, metrics)
        return metrics

    def evaluate_and_judge(self, step: int) -> bool:
        """Evaluate after ``step`` steps; True when the run stops here (early stopping, or
        a callback asked to stop)."""
        metrics = self.evaluate(step)
        current = metrics.get("val_loss", metrics["train_loss"])
        if self.early_stopping is not None:
            if current < self.best_val:
                self.best_val, self.since_best = current, 0
                self.best_state = copy.deepcopy(self.model.state_dict())
                self.history.best_step = step
            else:
                self.since_best += 1
                if self.since_best >= self.early_stopping:
                    self.state.stop = "early_stopping"
        if self.state.stop:
            self.history.stopped, self.history.stop_step = self.state.stop, step
        return bool(self.state.stop)

    def finish(self) -> History:
        history = self.history
        if self.best_state is not None and history.stopped == "early_stopping":
            self.model.load_state_dict(self.best_state)
        if history.steps and (not history.evals or history.evals[-1]["step"] != history.steps):
            # Every run ends with its final metrics, however it stopped (interrupted, NaN, or
            # a callback such as diagnose's blow-up stop): a run that blew up before its first
            # evaluation must still score, NaN for a NaN model.
            with contextlib.suppress(KeyboardInterrupt):
                self.evaluate(history.steps)
        if self.probe is not None:
            self.probe.trace.facts.stop_reason = history.stopped
            self.probe.trace.facts.stop_step = history.stop_step
        _call(self.callbacks, "on_train_end", self.state)
        return history

"""reference: what cheap models reach on the same split, the yardstick for underfitting.

A network "underfits" when it stays far from what the data allows, and the data's own noise
can keep the best achievable loss far above 0 (two overlapping classes: ln 2 at chance, but
maybe 0.4 at best). ``fit_reference`` measures what the data allows, cheaply: a logistic
regression (ridge for regression) and a small histogram gradient-boosted model on the
flattened inputs, seeded, scored on the validation split (without one: 3-fold
cross-validated on the training set) in the run's own loss units, log loss or MSE. The
better of the two is the reference. It is a property of the split, not of the run: it is
seeded with 0 whatever the run's seed, and the last few are kept (``CACHE_SIZE``, by the
identity of the tensors), so that a sweep over seeds or a repair search's many runs on the
same data fit it once.

The budget: at most ``MAX_ROWS`` training rows (a seeded subsample) and ``MAX_VAL_ROWS``
validation rows, at most ``MAX_FEATURES`` flattened features, ``GBM_ITER`` boosting rounds
with early stopping; on the calibration suite's data (up to 2,000 rows x 64 features, 10
classes) both models together take about 0.2-1.5 s on one core. A second model is not
started once ``SECONDS`` have gone. What cannot be judged in those terms is skipped with
the reason: integer inputs (token ids), targets with more than one value per sample
(sequences), too many features, a DataLoader that does not yield ``MAX_ROWS`` rows within
``LOADER_SECONDS``, and a loss function whose units are not log loss or MSE.

>>> import deepdoctor as dd
>>> split = dd.data.load("spirals")
>>> fit_reference(split.train, split.val).model in ("logistic", "boosting")
True
"""

from __future__ import annotations

import math
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.nn import functional as F

from .training import infer_task, is_loader, loader_tensors, targets_for

MAX_ROWS = 5000  # fit on at most this many training rows: both models stay near a second
MAX_VAL_ROWS = 10_000  # score on at most this many validation rows (scoring is cheap)
MAX_FEATURES = 1024  # more flattened features than this (images): a flat model says little
LOADER_SECONDS = 5.0  # a DataLoader slower than this to yield MAX_ROWS rows is not read
SECONDS = 10.0  # no further model is started once the references have taken this long
CV_FOLDS = 3  # without validation data: 3-fold cross-validated training loss
MIN_ROWS = 30  # fewer training rows than this: no split of them says anything
GBM_ITER = 100  # boosting rounds (early stopping on 10% of the rows usually ends sooner)
GBM_EARLY_STOP_ROWS = 500  # its 10% hold-out needs rows of every class; small sets are fast
GBM_LEAVES = 15  # a small tree per round: this is a yardstick, not a competitor
LOGISTIC_ITER = 300  # lbfgs iterations; standardised inputs converge well within this
CACHE_SIZE = 8  # references kept for tensors still alive and unchanged since
PROBABILITY_FLOOR = 1e-7  # a class the reference never saw gets this probability, not 0


@dataclass
class Reference:
    """The best cheap model's score on the split, or why there is none (``skipped``).

    ``val_loss`` is in the run's loss units (log loss or MSE); ``val_accuracy`` is None for
    regression; ``source`` says whether it was scored on the validation split or
    cross-validated on the training set; ``seconds`` is the time all the fits took.
    """

    model: str | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    seconds: float = 0.0
    source: str | None = None
    rows: int = 0
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.skipped is not None:
            return {"skipped": self.skipped}
        return {
            "model": self.model,
            "val_loss": _round(self.val_loss),
            "val_accuracy": _round(self.val_accuracy),
            "seconds": round(self.seconds, 2),
            "source": self.source,
            "rows": self.rows,
        }


def _round(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(f"{value:.4g}")


class _Skip(Exception):
    """Why no reference can be fitted in seconds."""


_CACHE: OrderedDict[tuple[Any, ...], tuple[list[weakref.ref[torch.Tensor]], Reference]] = (
    OrderedDict()
)


def fit_reference(
    train: Any,
    val: Any = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    seed: int = 0,
) -> Reference:
    """The best of the cheap references on ``train`` scored on ``val`` (see the module)."""
    tensors = [t for part in (train, val) if part is not None and not is_loader(part) for t in part]
    key = None
    if len(tensors) == (val is not None) * 2 + 2:  # tensors all through: cacheable
        task = infer_task(tensors[1], loss_fn)
        units = _units_known(loss_fn, task)
        key = (*((id(t), t._version) for t in tensors), task, units, seed)
        hit = _CACHE.get(key)
        if hit is not None and all(r() is t for r, t in zip(hit[0], tensors, strict=True)):
            return hit[1]
    ref = _fit(train, val, loss_fn, seed)
    if key is not None:
        _CACHE[key] = ([weakref.ref(t) for t in tensors], ref)
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return ref


def _fit(train: Any, val: Any, loss_fn: Any, seed: int) -> Reference:
    start = time.perf_counter()
    try:
        X, y = _rows(train, MAX_ROWS, seed)
        task = infer_task(y, loss_fn)
        _check(X, y, task, loss_fn)
        Xv, yv = _rows(val, MAX_VAL_ROWS, seed) if val is not None else (None, None)
        x, t = _arrays(X, y, task)
        best: tuple[float, float | None, str] | None = None
        failed = []
        for name, make in _candidates(task, seed, len(x)):
            if best is not None and time.perf_counter() - start > SECONDS:
                break
            try:
                if Xv is not None and yv is not None:
                    score = _score(make, x, t, *_arrays(Xv, yv, task), task)
                else:
                    score = _cross_validated(make, x, t, task, seed)
            except ValueError as error:  # e.g. too few rows of a class for a split
                failed.append(f"{name}: {str(error).splitlines()[0]}")
                continue
            if math.isfinite(score[0]) and (best is None or score[0] < best[0]):
                best = (*score, name)
        if best is None:
            raise _Skip("no reference model could be fitted (" + "; ".join(failed) + ")")
    except _Skip as why:
        return Reference(skipped=str(why), seconds=time.perf_counter() - start)
    return Reference(
        model=best[2],
        val_loss=best[0],
        val_accuracy=best[1],
        seconds=time.perf_counter() - start,
        source="validation" if val is not None else f"{CV_FOLDS}-fold cross-validated training",
        rows=len(x),
    )


def _rows(data: Any, limit: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``limit`` rows: a seeded subsample of tensors, the first rows of a loader."""
    if not is_loader(data):
        X, y = data
        if len(X) > limit:
            keep = torch.as_tensor(np.random.default_rng(seed).choice(len(X), limit, False))
            X, y = X[keep], y[keep]
        return X, y
    try:
        return loader_tensors(data, limit, max_seconds=LOADER_SECONDS)
    except (TimeoutError, ValueError) as exc:
        raise _Skip(str(exc)) from None


def _check(X: Any, y: torch.Tensor, task: str, loss_fn: Any) -> None:
    if not isinstance(X, torch.Tensor):
        raise _Skip("the inputs are several tensors or keyword arguments, not one table")
    if not X.is_floating_point():
        raise _Skip(f"the inputs are {X.dtype} (token ids?), not features a flat model can use")
    if len(y) < MIN_ROWS:
        raise _Skip(f"{len(y)} training rows, fewer than {MIN_ROWS}")
    per_sample = y[0].numel()
    if per_sample > 1:
        raise _Skip(f"the targets hold {per_sample} values per sample (a sequence)")
    features = X[0].numel()
    if features > MAX_FEATURES:
        raise _Skip(f"{features} flattened features, more than {MAX_FEATURES}")
    if not _units_known(loss_fn, task):
        raise _Skip(f"the loss function {_name(loss_fn)} is not in log-loss or MSE units")
    if task == "binary" and not bool(((y == 0) | (y == 1)).all()):
        raise _Skip("the binary targets are not all 0 or 1")


def _name(loss_fn: Any) -> str:
    return getattr(loss_fn, "__name__", type(loss_fn).__name__)


def _units_known(loss_fn: Any, task: str) -> bool:
    """Whether the run's loss is the plain mean log loss (classification, binary) or MSE."""
    if loss_fn is None:
        return True
    if task == "classification":
        if isinstance(loss_fn, nn.CrossEntropyLoss):
            return (
                loss_fn.weight is None
                and loss_fn.label_smoothing == 0
                and loss_fn.reduction == "mean"
            )
        return loss_fn is F.cross_entropy
    if task == "binary":
        if isinstance(loss_fn, nn.BCEWithLogitsLoss):
            return (
                loss_fn.weight is None
                and loss_fn.pos_weight is None
                and loss_fn.reduction == "mean"
            )
        return loss_fn is F.binary_cross_entropy_with_logits
    if isinstance(loss_fn, nn.MSELoss):
        return loss_fn.reduction == "mean"
    return loss_fn is F.mse_loss


def _arrays(X: torch.Tensor, y: torch.Tensor, task: str) -> tuple[np.ndarray, np.ndarray]:
    x = X.detach().reshape(len(X), -1).float().cpu().numpy()
    t = targets_for(y.detach().reshape(len(y)), task).cpu().numpy()
    return x, (t.astype(np.int64) if task != "regression" else t.astype(np.float64))


def _candidates(task: str, seed: int, rows: int) -> list[tuple[str, Callable[[], Any]]]:
    gbm: dict[str, Any] = {
        "max_iter": GBM_ITER,
        "max_leaf_nodes": GBM_LEAVES,
        "early_stopping": rows >= GBM_EARLY_STOP_ROWS,
        "random_state": seed,
    }
    if task == "regression":
        return [
            ("ridge", lambda: make_pipeline(StandardScaler(), Ridge())),
            ("boosting", lambda: HistGradientBoostingRegressor(**gbm)),
        ]
    return [
        (
            "logistic",
            lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=LOGISTIC_ITER)),
        ),
        ("boosting", lambda: HistGradientBoostingClassifier(**gbm)),
    ]


def _predict(
    make: Callable[[], Any], x: np.ndarray, t: np.ndarray, xv: np.ndarray, task: str, width: int
) -> np.ndarray:
    """Fit on (x, t); predictions on xv: values, or probabilities over ``width`` classes."""
    model = make()
    if task != "regression" and len(np.unique(t)) < 2:
        out = np.full((len(xv), width), PROBABILITY_FLOOR)
        out[:, t[0]] = 1.0
        return out
    model.fit(x, t)
    if task == "regression":
        return np.asarray(model.predict(xv), dtype=np.float64)
    out = np.full((len(xv), width), PROBABILITY_FLOOR)
    out[:, model.classes_] = model.predict_proba(xv)
    return out


def _metrics(pred: np.ndarray, t: np.ndarray, task: str) -> tuple[float, float | None]:
    if task == "regression":
        return float(np.mean((pred - t) ** 2)), None
    p = pred / pred.sum(1, keepdims=True)
    loss = -float(np.mean(np.log(np.maximum(p[np.arange(len(t)), t], PROBABILITY_FLOOR))))
    return loss, float(np.mean(p.argmax(1) == t))


def _width(*targets: np.ndarray) -> int:
    return int(max(int(t.max()) for t in targets if len(t))) + 1


def _score(
    make: Callable[[], Any],
    x: np.ndarray,
    t: np.ndarray,
    xv: np.ndarray,
    tv: np.ndarray,
    task: str,
) -> tuple[float, float | None]:
    width = _width(t, tv) if task != "regression" else 0
    return _metrics(_predict(make, x, t, xv, task, width), tv, task)


def _cross_validated(
    make: Callable[[], Any], x: np.ndarray, t: np.ndarray, task: str, seed: int
) -> tuple[float, float | None]:
    width = _width(t) if task != "regression" else 0
    pred = np.zeros((len(t), width)) if width else np.zeros(len(t))
    for fit, held in KFold(CV_FOLDS, shuffle=True, random_state=seed).split(x):
        pred[held] = _predict(make, x[fit], t[fit], x[held], task, width)
    return _metrics(pred, t, task)

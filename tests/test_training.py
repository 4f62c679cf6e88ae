"""deepdoctor.training: determinism, budget, clipping, schedules, callbacks, clean stops."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
import torch
from torch import nn

from deepdoctor import models, training
from deepdoctor.probe import Probe

Data = tuple[torch.Tensor, torch.Tensor]


def _mlp(seed: int = 0, **kwargs: Any) -> nn.Module:
    torch.manual_seed(seed)
    return models.mlp(10, 3, **{"depth": 2, "width": 16, **kwargs})


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Recorder:
    """A callback that writes down every moment it is called at."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.batch_sizes: list[int] = []
        self.grad_norms: list[float] = []

    def on_train_start(self, state: training.TrainState) -> None:
        self.events.append(("on_train_start", state.step))

    def on_after_backward(self, state: training.TrainState) -> None:
        self.events.append(("on_after_backward", state.step))
        assert state.batch is not None
        self.batch_sizes.append(len(state.batch[0]))

    def on_step_end(self, state: training.TrainState) -> None:
        self.events.append(("on_step_end", state.step))
        grads = [p.grad for p in state.model.parameters() if p.grad is not None]
        self.grad_norms.append(
            float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])))
        )

    def on_eval(self, state: training.TrainState, metrics: dict[str, float]) -> None:
        self.events.append(("on_eval", int(metrics["step"])))

    def on_train_end(self, state: training.TrainState) -> None:
        self.events.append(("on_train_end", state.step))


# -- determinism --------------------------------------------------------------------------


def test_same_seed_gives_the_same_weights_bit_for_bit(blobs: Data) -> None:
    runs = []
    for _ in range(2):
        model = _mlp(dropout=0.2, norm="batch")  # dropout draws from the seeded global RNG
        training.train(model, blobs, steps=25, batch_size=32, seed=7)
        runs.append(model)
    assert _same_weights(*runs)


def test_another_seed_gives_other_weights(blobs: Data) -> None:
    a, b = _mlp(), _mlp()
    training.train(a, blobs, steps=10, seed=1)
    training.train(b, blobs, steps=10, seed=2)  # same start, another data order
    assert not torch.equal(a.fc1.weight, b.fc1.weight)


# -- budget -------------------------------------------------------------------------------


def test_steps_count_optimizer_steps_and_batch_size_is_respected(blobs: Data) -> None:
    rec = Recorder()
    history = training.train(_mlp(), blobs, steps=11, batch_size=48, callbacks=[rec])
    assert history.steps == 11 and len(history.loss) == 11 and len(history.lr) == 11
    # 256 samples: 5 full batches of 48 per epoch; the last incomplete one is dropped
    assert rec.batch_sizes == [48] * 11


def test_epochs_are_full_passes(blobs: Data) -> None:
    history = training.train(_mlp(), blobs, epochs=3, batch_size=64)
    assert history.steps == 3 * (256 // 64)


def test_a_batch_larger_than_the_data_uses_all_of_it(blobs: Data) -> None:
    rec = Recorder()
    X, y = blobs
    training.train(_mlp(), (X[:30], y[:30]), steps=3, batch_size=64, callbacks=[rec])
    assert rec.batch_sizes == [30, 30, 30]


def test_dataloader_input_works_and_cycles(blobs: Data) -> None:
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*blobs), batch_size=100)
    rec = Recorder()
    history = training.train(_mlp(), loader, val=loader, steps=7, callbacks=[rec])
    assert history.steps == 7
    assert rec.batch_sizes == [100, 100, 56] * 2 + [100]  # two epochs and a bit
    assert {"val_loss", "val_accuracy"} <= set(history.final)
    assert training.train(_mlp(), loader, epochs=2).steps == 2 * len(loader)


# -- gradient clipping --------------------------------------------------------------------


def test_clip_grad_clips_the_total_norm_and_records_it(blobs: Data) -> None:
    clip = 0.05
    rec = Recorder()
    history = training.train(
        _mlp(init="normal:1.0"), blobs, steps=8, clip_grad=clip, callbacks=[rec]
    )
    assert len(history.clipped) == 8 and len(history.grad_norm) == 8
    assert all(history.clipped) and min(history.grad_norm) > clip  # large init: big gradients
    for before, after in zip(history.grad_norm, rec.grad_norms, strict=True):
        assert after == pytest.approx(clip, rel=1e-4)  # scaled down to the clip
        assert before > after
    unclipped = training.train(_mlp(), blobs, steps=3)
    assert unclipped.clipped == [] and all(math.isnan(g) for g in unclipped.grad_norm)


# -- schedules ----------------------------------------------------------------------------

LR, STEPS = 0.1, 20


def _lrs(schedule: str, **kwargs: Any) -> list[float]:
    X = torch.randn(40, 10)
    y = torch.arange(40) % 3
    history = training.train(
        _mlp(),
        (X, y),
        steps=STEPS,
        batch_size=8,
        schedule=schedule,
        optimizer=lambda p: torch.optim.SGD(p, lr=LR),
        **kwargs,
    )
    return history.lr


def test_constant_and_step_schedules() -> None:
    assert _lrs("constant") == [LR] * STEPS
    # /10 at half and at three quarters of the run
    expected = [LR] * 10 + [LR / 10] * 5 + [LR / 100] * 5
    assert _lrs("step") == pytest.approx(expected, rel=1e-12)


def test_cosine_schedule() -> None:
    expected = [LR * 0.5 * (1 + math.cos(math.pi * k / STEPS)) for k in range(STEPS)]
    assert _lrs("cosine") == pytest.approx(expected, rel=1e-12)


def test_warmup_schedules_ramp_up_over_the_first_tenth() -> None:
    warm = 2  # 10% of 20 steps
    ramp = [LR * (k + 1) / warm for k in range(warm)]
    assert _lrs("warmup") == pytest.approx(ramp + [LR] * (STEPS - warm), rel=1e-12)
    rest = STEPS - warm
    decay = [LR * 0.5 * (1 + math.cos(math.pi * k / rest)) for k in range(rest)]
    assert _lrs("warmup_cosine") == pytest.approx(ramp + decay, rel=1e-12)
    five = _lrs("warmup", warmup_steps=5)
    assert five[:6] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1, 0.1], rel=1e-12)


# -- evaluation and early stopping --------------------------------------------------------


def test_evaluation_every_k_steps_and_at_the_end(blobs: Data) -> None:
    history = training.train(_mlp(), blobs, val=blobs, steps=12, eval_every=5)
    assert [e["step"] for e in history.evals] == [5, 10, 12]
    assert set(history.final) == {
        "step",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "val_balanced_accuracy",
    }
    # train and validation are the same data here, so they must agree
    assert history.final["train_loss"] == pytest.approx(history.final["val_loss"], rel=1e-6)
    default = training.train(_mlp(), blobs, steps=30)
    assert [e["step"] for e in default.evals] == [3 * k for k in range(1, 11)]  # 10 per run


def test_training_learns(blobs: Data) -> None:
    history = training.train(
        _mlp(), blobs, val=blobs, steps=150, optimizer=lambda p: torch.optim.Adam(p, lr=0.01)
    )
    assert history.evals[0]["train_loss"] > history.final["train_loss"]
    assert history.final["val_accuracy"] > 0.9


def test_early_stopping_stops_and_restores_the_best_weights(blobs: Data) -> None:
    X, y = blobs
    # Validation labels are shifted: the better the model fits the training data, the worse
    # its validation loss, so the best evaluation is the first one.
    val = (X, (y + 1) % 3)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    class Snapshot:
        def on_eval(self, state: training.TrainState, metrics: dict[str, float]) -> None:
            snapshots[int(metrics["step"])] = copy.deepcopy(state.model.state_dict())

    model = _mlp()
    history = training.train(
        model,
        blobs,
        val=val,
        steps=200,
        eval_every=5,
        early_stopping=3,
        callbacks=[Snapshot()],
        optimizer=lambda p: torch.optim.Adam(p, lr=0.01),
    )
    assert history.stopped == "early_stopping"
    assert history.best_step == 5 and history.stop_step == 5 + 3 * 5
    vals = history.metric("val_loss")
    assert vals[0] == min(vals) and len(vals) == 4
    best = snapshots[5]
    assert all(torch.equal(model.state_dict()[k], best[k]) for k in best)
    assert not torch.equal(snapshots[20]["fc1.weight"], best["fc1.weight"])
    # final reports the model the run returns: the best evaluation's, not the last one's
    assert history.final == history.evals[0] and history.evals[-1]["step"] == 20
    assert history.final["val_loss"] < history.evals[-1]["val_loss"]


# -- callbacks ----------------------------------------------------------------------------


def test_callbacks_are_called_at_their_moments(blobs: Data) -> None:
    rec = Recorder()
    training.train(_mlp(), blobs, steps=4, eval_every=2, callbacks=[rec])
    assert rec.events == [
        ("on_train_start", 0),
        ("on_after_backward", 0),
        ("on_step_end", 0),
        ("on_after_backward", 1),
        ("on_step_end", 1),
        ("on_eval", 2),
        ("on_after_backward", 2),
        ("on_step_end", 2),
        ("on_after_backward", 3),
        ("on_step_end", 3),
        ("on_eval", 4),
        ("on_train_end", 3),
    ]


def test_state_stop_ends_the_run_after_that_step(blobs: Data) -> None:
    class StopAtThree:
        def on_step_end(self, state: training.TrainState) -> None:
            if state.step == 3:
                state.stop = "enough"

    history = training.train(_mlp(), blobs, steps=50, callbacks=[StopAtThree()])
    assert history.stopped == "enough" and history.stop_step == 4 and history.steps == 4
    assert len(history.loss) == 4
    # a callback's stop before the first evaluation still ends with the final metrics
    assert [e["step"] for e in history.evals] == [4.0]
    assert math.isfinite(history.final["train_loss"])


# -- clean stops: non-finite loss, Ctrl-C -------------------------------------------------


class PoisonAt:
    """Writes NaN into one weight at the end of a step, as a diverging update would."""

    def __init__(self, step: int, layer: str = "fc2") -> None:
        self.step, self.layer = step, layer

    def on_step_end(self, state: training.TrainState) -> None:
        if state.step == self.step:
            with torch.no_grad():
                state.model.get_submodule(self.layer).weight[0, 0] = math.nan


def test_a_nonfinite_loss_stops_the_run_cleanly(blobs: Data) -> None:
    rec = Recorder()
    history = training.train(_mlp(), blobs, steps=20, callbacks=[PoisonAt(3), rec])
    assert history.stopped == "nonfinite_loss" and history.stop_step == 4
    assert history.steps == 4  # four good updates; the fifth was never applied
    assert len(history.loss) == 5 and math.isnan(history.loss[-1])
    assert all(math.isfinite(v) for v in history.loss[:4])
    assert history.evals[-1]["step"] == 4 and math.isnan(history.final["train_loss"])
    assert rec.events[-1][0] == "on_train_end"
    json.dumps(history.to_dict(), allow_nan=False)  # NaN is written as null


def test_a_nonfinite_loss_is_located_by_the_probe(blobs: Data) -> None:
    model = _mlp()
    with Probe(model) as probe:
        history = training.train(model, blobs, steps=20, probe=probe, callbacks=[PoisonAt(3)])
    where = probe.trace.facts.nonfinite_at
    assert where == {"step": 4, "first_nonfinite_module": "fc2", "nonfinite_weights": ["fc2"]}
    assert probe.trace.n_steps == 5 == len(history.loss)
    steps = probe.trace.steps
    assert steps.rows["nonfinite_loss"][-1] == [1.0] and steps.rows["nonfinite_loss"][3] == [0.0]
    assert math.isnan(probe.trace.loss()[-1])
    # the failing step computed no gradient: the row says so instead of repeating step 3's
    assert all(math.isnan(v) for v in probe.trace.layer.rows["grad_norm_weight"][-1])


def test_ctrl_c_stops_cleanly_and_keeps_the_history(blobs: Data) -> None:
    class CtrlC:
        def on_step_end(self, state: training.TrainState) -> None:
            if state.step == 6:
                raise KeyboardInterrupt

    rec = Recorder()
    history = training.train(_mlp(), blobs, steps=100, eval_every=5, callbacks=[CtrlC(), rec])
    assert history.stopped == "interrupted" and history.stop_step == 7 == history.steps
    assert len(history.loss) == 7
    assert [e["step"] for e in history.evals] == [5, 7]  # a final evaluation where it stopped
    assert rec.events[-1][0] == "on_train_end"


# -- tasks --------------------------------------------------------------------------------


def test_regression_uses_mse_and_reports_no_accuracy(blobs: Data) -> None:
    X, _ = blobs
    y = X[:, 0] * 2 - X[:, 1]  # float targets of shape (N,); the model outputs (N, 1)
    torch.manual_seed(0)
    model = models.mlp(10, 1, depth=1, width=16)
    history = training.train(
        model, (X, y), val=(X, y), steps=100, optimizer=lambda p: torch.optim.Adam(p, lr=0.01)
    )
    assert history.task == "regression"
    assert math.isnan(history.final["train_accuracy"]) and math.isnan(history.final["val_accuracy"])
    with torch.no_grad():
        mse = float(((model(X)[:, 0] - y) ** 2).mean())
    assert history.final["train_loss"] == pytest.approx(mse, rel=1e-5)
    assert history.final["train_loss"] < 0.2 * history.loss[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.long])
def test_binary_with_bce_with_logits(blobs: Data, dtype: torch.dtype) -> None:
    X, _ = blobs
    y = (X[:, 0] > 0).to(dtype)  # 0/1 targets, as floats or as integers
    torch.manual_seed(0)
    model = models.mlp(10, 1, depth=1, width=16)
    history = training.train(
        model,
        (X, y),
        val=(X, y),
        loss_fn=nn.BCEWithLogitsLoss(),
        steps=100,
        optimizer=lambda p: torch.optim.Adam(p, lr=0.01),
    )
    assert history.task == "binary"
    assert history.final["val_accuracy"] > 0.9


def test_a_column_of_class_indices_is_accepted(blobs: Data) -> None:
    X, y = blobs
    a, b = _mlp(), _mlp()
    training.train(a, (X, y), steps=5)
    training.train(b, (X, y[:, None]), steps=5)
    assert _same_weights(a, b)


# -- bad input ----------------------------------------------------------------------------


class TupleNet(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = models.mlp(10, 3, depth=2, width=16)
        self.kind = kind

    def forward(self, x: torch.Tensor) -> Any:
        out = self.net(x)
        if self.kind == "tuple":
            return out, {"aux": 1}
        if self.kind == "dict":
            return {"logits": out, "hidden": x}
        if self.kind == "bad_dict":
            return {"prediction": out}
        return "not a tensor"


@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_a_tuple_or_dict_output_is_read_like_huggingface(blobs: Data, kind: str) -> None:
    wrapped, plain = TupleNet(kind), _mlp()
    training.train(wrapped, blobs, steps=5)
    training.train(plain, blobs, steps=5)
    assert _same_weights(wrapped.net, plain)  # the prediction is the first element / logits


def test_outputs_deepdoctor_cannot_read_are_clear_errors(blobs: Data) -> None:
    with pytest.raises(TypeError, match=r"a dict with keys \['prediction'\].*'logits'"):
        training.train(TupleNet("bad_dict"), blobs, steps=1)
    with pytest.raises(TypeError, match="the model returned str; return a tensor"):
        training.train(TupleNet("str"), blobs, steps=1)


def test_a_model_without_trainable_parameters_is_an_error(blobs: Data) -> None:
    with pytest.raises(ValueError, match="no trainable parameters"):
        training.train(nn.Flatten(), blobs, steps=1)
    frozen = _mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad=False"):
        training.train(frozen, blobs, steps=1)


def test_frozen_parameters_are_left_alone(blobs: Data) -> None:
    model = _mlp()
    model.fc1.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    training.train(model, blobs, steps=5)
    assert torch.equal(model.fc1.weight, before["fc1.weight"])
    assert not torch.equal(model.fc2.weight, before["fc2.weight"])


@pytest.mark.parametrize(
    "make,error,message",
    [
        (
            lambda X, y: (X.index_fill(0, torch.tensor([3]), math.nan), y),
            ValueError,
            "train: X contains 10 NaN or Inf values; remove or impute them",
        ),
        (lambda X, y: (X, y[:100]), ValueError, "X has 256 samples but y has 100"),
        (lambda X, y: (X[:0], y[:0]), ValueError, "train is empty"),
        (lambda X, y: X, TypeError, "train must be a DataLoader or a tuple"),
        (
            lambda X, y: (X, (y + 5)),
            ValueError,
            "the model has 3 outputs but the targets contain class 7",
        ),
        (lambda X, y: (X, y - 1), ValueError, "the targets contain class -1"),
        (
            lambda X, y: (X, y.float()),
            ValueError,
            r"the targets are floats .* the model gives 3 outputs per target.*y\.long\(\)",
        ),
        (
            lambda X, y: (X[:, :4], y),
            ValueError,
            r"the model failed on a training batch X \(64, 4\).*Check that the model's input",
        ),
    ],
)
def test_bad_data_gets_a_clear_error(blobs: Data, make: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        training.train(_mlp(), make(*blobs), steps=2)


def test_validation_data_is_checked_too(blobs: Data) -> None:
    X, y = blobs
    with pytest.raises(ValueError, match="val: X has 256 samples but y has 3"):
        training.train(_mlp(), blobs, val=(X, y[:3]), steps=1)


def test_an_empty_dataloader_is_an_error() -> None:
    empty = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.zeros(0, 10), torch.zeros(0, dtype=torch.long))
    )
    with pytest.raises(ValueError, match="the DataLoader yielded no batches"):
        training.train(_mlp(), empty, steps=1)


def test_output_without_a_class_axis_is_an_error(blobs: Data) -> None:
    flat = nn.Sequential(nn.Linear(10, 1), nn.Flatten(0))
    with pytest.raises(ValueError, match=r"output has shape \(64,\) but the targets are class "):
        training.train(flat, blobs, steps=1)


def test_a_loss_that_is_not_a_scalar_is_an_error(blobs: Data) -> None:
    with pytest.raises(ValueError, match=r"loss_fn returned \(64,\), not a scalar"):
        training.train(_mlp(), blobs, loss_fn=nn.CrossEntropyLoss(reduction="none"), steps=1)


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"steps": "100"}, TypeError, r"steps must be a whole number, got '100' \(str\)"),
        ({"steps": 0}, ValueError, "steps must be at least 1"),
        ({"steps": None}, ValueError, "give steps or epochs"),
        ({"epochs": "2"}, TypeError, "epochs must be a whole number"),
        ({"batch_size": "x"}, TypeError, r"batch_size must be a whole number, got 'x' \(str\)"),
        ({"seed": 1.5}, TypeError, "seed must be a whole number"),
        ({"clip_grad": "1"}, TypeError, "clip_grad must be a number"),
        ({"clip_grad": -1.0}, ValueError, "clip_grad must be positive"),
        ({"eval_every": 0}, ValueError, "eval_every must be at least 1"),
        ({"early_stopping": "3"}, TypeError, "early_stopping must be a whole number"),
        ({"schedule": "linear"}, ValueError, "schedule must be one of constant, step, cosine"),
        (
            {"schedule": "warmup", "warmup_steps": "5"},
            TypeError,
            "warmup_steps must be a whole number",
        ),
        ({"optimizer": "adam"}, TypeError, "optimizer must be a torch.optim.Optimizer or a"),
        ({"optimizer": lambda p: None}, TypeError, "the optimizer factory returned NoneType"),
    ],
)
def test_bad_arguments_are_named(blobs: Data, kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        training.train(_mlp(), blobs, **kwargs)


def test_a_model_that_is_not_a_module_is_an_error(blobs: Data) -> None:
    with pytest.raises(TypeError, match="model must be an nn.Module, got function"):
        training.train(lambda x: x, blobs)

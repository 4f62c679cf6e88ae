"""What every method needs: the experiment, the trained teacher, the validation data, and
the two moves they share: fine-tune a model with the project's one loop, and measure it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..experiment import Experiment
from ..training import default_loss, infer_task, loader_tensors
from . import measure
from .points import Point


class Skip(Exception):  # noqa: N818 -- a method that cannot run here, not a failure
    """Raised by a method that cannot handle this model; the message says why."""


@dataclass
class Context:
    experiment: Experiment
    teacher: nn.Module  # the trained, uncompressed model; methods work on copies
    val: tuple[torch.Tensor, torch.Tensor]
    batch: torch.Tensor  # the latency batch
    task: str
    loss_fn: Callable[..., torch.Tensor]
    finetune_steps: int
    timing: float  # seconds of timed forwards per point
    progress: bool = False

    @classmethod
    def make(
        cls,
        experiment: Experiment,
        teacher: nn.Module,
        finetune_steps: int,
        timing: float,
        progress: bool = False,
    ) -> Context:
        train_x, train_y = loader_tensors(experiment.train, experiment.batch_size)
        if experiment.val is not None:
            val = loader_tensors(experiment.val)
        else:
            val = loader_tensors(experiment.train)
        task = infer_task(train_y, experiment.loss_fn)
        loss_fn = experiment.loss_fn or default_loss(train_y)
        return cls(
            experiment,
            teacher,
            val,
            val[0][: experiment.batch_size],
            task,
            loss_fn,
            finetune_steps,
            timing,
            progress,
        )

    def copy_teacher(self) -> nn.Module:
        return copy.deepcopy(self.teacher)

    def finetune(self, model: nn.Module, steps: int | None = None, label: str = "") -> int:
        """Train ``model`` in place for ``steps`` (default: the fine-tune budget) with the
        experiment's loop, optimizer and seed; return the steps spent."""
        steps = self.finetune_steps if steps is None else steps
        if steps > 0:
            self.experiment.run(
                model=model, steps=steps, progress=label if self.progress else False
            )
        return steps

    def point(
        self,
        method: str,
        setting: str,
        strength: float | None,
        model: nn.Module,
        finetune_steps: int = 0,
        details: dict[str, Any] | None = None,
        note: str = "",
        connections: int | None = None,
    ) -> Point:
        """Measure ``model``; ``connections`` overrides the count where the tensors hide it."""
        model.eval()
        loss, acc = measure.validation(model, self.val, self.loss_fn, self.task)
        return Point(
            method=method,
            setting=setting,
            strength=strength,
            model=model,
            connections=measure.connections(model) if connections is None else connections,
            parameters=measure.parameters(model),
            bytes=measure.saved_bytes(model),
            latency_ms=measure.latency_ms(model, self.batch, self.timing),
            val_loss=loss,
            val_accuracy=acc,
            finetune_steps=finetune_steps,
            details=details or {},
            note=note,
        )

"""``DeepDoctorCallback`` for the Hugging Face Trainer.

    trainer = Trainer(model, args, train_dataset=..., callbacks=[DeepDoctorCallback()])
    trainer.train()
    callback.findings, callback.trace

No ``compute_loss`` override is needed: the Probe attaches to the model at train begin,
and a hook on the model's forward takes each training micro-batch's ``labels`` (the
targets) and its output's ``loss``. The step's loss is what the Trainer backpropagates:
each micro-batch's loss times the factor the Trainer scales it by (read off the gradient
that reaches it, 1 / gradient_accumulation_steps or 1), summed over the step. Under fp16
with a loss scaler that factor includes the scale, so the recorded loss is the scaled one.
The gradients are read in the optimizer's step pre-hook, after the Trainer's gradient
clipping (``max_grad_norm``), as the optimizer sees them. At train end the findings go to
the log (one line each) and to ``state.log_history`` (``deepdoctor/problems`` and a
severity code per kind: 1 info, 2 warning, 3 critical); the report is written by the main
process when given a directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.utils import logging

from ..pretrained import PretrainedSpec
from ..probe import DEFAULT_EVERY
from .watch import Watch, WatchResults

__all__ = ["DeepDoctorCallback"]

log = logging.get_logger(__name__)


class DeepDoctorCallback(WatchResults, TrainerCallback):
    """Watch a Trainer run with deepdoctor's Probe; ``.trace``, ``.findings`` after it.

    every: record activation statistics every so many steps (the Probe's ``every``).
    pretrained: the pretrained modules' names or the loaded state dict, for a fine-tuning run
    (``deepdoctor.pretrained``; the Probe's ``pretrained``).
    report_dir: write ``report.html`` and the diagnosis JSON there at train end.
    """

    def __init__(
        self,
        every: int = DEFAULT_EVERY,
        report_dir: str | Path | None = None,
        pretrained: PretrainedSpec = None,
    ) -> None:
        self._watch = Watch(every=every, report_dir=report_dir, pretrained=pretrained)
        self._handles: list[Any] = []

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if model is None:
            return
        self._watch.start(model)
        self._remove_hooks()
        self._handles = [
            model.register_forward_pre_hook(self._on_forward, with_kwargs=True),
            model.register_forward_hook(self._on_output),
        ]

    def _on_forward(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        if module.training and torch.is_grad_enabled():
            self._watch.add_targets(kwargs.get("labels"))

    def _on_output(self, module: nn.Module, args: Any, output: Any) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        loss = output.get("loss") if isinstance(output, dict) else None
        if loss is None and isinstance(output, tuple) and output:
            loss = output[0]  # return_dict=False: (loss, logits, ...) when given labels
        if isinstance(loss, torch.Tensor) and loss.requires_grad and loss.numel() == 1:
            value = loss.detach()
            # the gradient reaching this loss is the factor the Trainer scaled it by
            loss.register_hook(lambda g: self._watch.add_loss(value * g))

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._watch.step_maybe_ended()

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._remove_hooks()
        self._watch.finish(is_main=state.is_world_process_zero)
        if state.is_world_process_zero:
            for line in self._watch.lines():
                if self._watch.message:
                    log.warning(line)
                else:
                    log.info(line)
            state.log_history.append({**self._watch.metrics(), "step": state.global_step})

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

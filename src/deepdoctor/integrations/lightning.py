"""``DeepDoctorCallback`` for PyTorch Lightning (``lightning.pytorch``).

    trainer = L.Trainer(callbacks=[DeepDoctorCallback(report_dir="deepdoctor-out")])
    trainer.fit(module, loader)
    callback.findings, callback.trace

At fit start the Probe attaches to the LightningModule; each training batch's forward is
observed from ``on_train_batch_start`` to ``on_before_backward``, which also hands over the
loss (Lightning has already divided it by ``accumulate_grad_batches``, so the step's loss is
the sum over its micro-batches). The gradients are read when the optimizer's closure has
returned, i.e. after backward (and after Lightning's gradient clipping, as the optimizer
sees them). Manual optimisation works the same way: ``manual_backward`` calls
``on_before_backward``, ``opt.step()`` ends the step. At fit end the findings go to the
Trainer's logger (``deepdoctor/problems`` and a severity code per kind: 1 info, 2 warning,
3 critical) and to the log as one line each; the report is written on global rank 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from ..pretrained import PretrainedSpec
from ..probe import DEFAULT_EVERY
from .watch import Watch, WatchResults

__all__ = ["DeepDoctorCallback"]


class DeepDoctorCallback(WatchResults, Callback):
    """Watch a Lightning fit with deepdoctor's Probe; ``.trace``, ``.findings`` after it.

    every: record activation statistics every so many steps (the Probe's ``every``).
    pretrained: the pretrained modules' names or the loaded state dict, for a fine-tuning run
    (``deepdoctor.pretrained``; the Probe's ``pretrained``).
    report_dir: write ``report.html`` and the diagnosis JSON there at fit end.
    """

    def __init__(
        self,
        every: int = DEFAULT_EVERY,
        report_dir: str | Path | None = None,
        pretrained: PretrainedSpec = None,
    ) -> None:
        super().__init__()
        self._watch = Watch(every=every, report_dir=report_dir, pretrained=pretrained)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._watch.start(pl_module)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._watch.begin_batch(batch)

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Any) -> None:
        if self._watch.probe is not None:
            self._watch.probe.end_forward()
        self._watch.add_loss(loss)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        self._watch.step_maybe_ended()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._watch.finish(is_main=trainer.is_global_zero)
        if trainer.is_global_zero:
            for line in self._watch.lines():
                rank_zero_info(line)
            for logger in trainer.loggers:
                logger.log_metrics(self._watch.metrics(), step=trainer.global_step)
                logger.save()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if self._watch.probe is not None:
            self._watch.probe.detach()  # no hooks left behind on a model that failed

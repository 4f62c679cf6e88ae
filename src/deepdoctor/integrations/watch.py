"""What both callbacks do, whatever framework calls them: a Probe on the model, each
step's loss and targets, the findings and the report at the end.

The frameworks differ only in where they tell us things (Lightning: ``on_before_backward``
hands over the loss; the Hugging Face Trainer: the model's output carries it), so each
callback translates its framework's events into these calls.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..batch import split_batch
from ..detectors import coverage, detect
from ..diagnose import Diagnosis
from ..findings import Finding, sort_findings
from ..pretrained import PretrainedSpec
from ..probe import DEFAULT_EVERY, Probe
from ..trace import Trace
from ..training import History

NO_STEP = (
    "the run ended before its first optimizer step, so deepdoctor recorded nothing to judge; "
    "train for at least one step (check max_steps or the number of epochs, and that the "
    "training data holds a batch)"
)
SEVERITY_CODE = {"info": 1, "warning": 2, "critical": 3}  # for loggers that take numbers only


class Watch:
    """A Probe over one fit, and the losses and targets of the step in progress."""

    def __init__(
        self,
        every: int = DEFAULT_EVERY,
        report_dir: str | Path | None = None,
        pretrained: PretrainedSpec = None,
    ) -> None:
        self.every = every
        self.pretrained = pretrained
        self.report_dir = None if report_dir is None else Path(report_dir)
        self.probe: Probe | None = None
        self.diagnosis: Diagnosis | None = None
        self.message: str | None = None  # what the end of the run said, when not findings
        self._loss: torch.Tensor | None = None  # the step's loss so far, on its device
        self._targets: list[torch.Tensor] = []
        self._steps_seen = 0

    def start(self, model: nn.Module) -> None:
        if self.probe is not None:
            self.probe.detach()
        self.probe = Probe(model, every=self.every, pretrained=self.pretrained)
        self.probe.attach()
        self.diagnosis, self.message = None, None
        self._loss, self._targets, self._steps_seen = None, [], 0

    def begin_batch(self, batch: Any) -> None:
        """A training batch begins: its inputs (for the input statistics) and targets."""
        if self.probe is None:
            return
        try:
            inputs, targets = split_batch(batch)
        except TypeError:  # a batch deepdoctor cannot read: the run is still watched
            inputs, targets = batch, None
        self.probe.begin_forward(inputs)
        self.add_targets(targets)

    def add_targets(self, targets: Any) -> None:
        if isinstance(targets, torch.Tensor) and targets.dim():
            self._targets.append(targets.detach())

    def add_loss(self, loss: Any) -> None:
        """A loss that is about to be backpropagated (summed over the step's micro-batches:
        Lightning and the Trainer divide each by the accumulation count)."""
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            value = loss.detach().reshape(()).float()
            self._loss = value if self._loss is None else self._loss + value

    def step_maybe_ended(self) -> None:
        """After a batch: when an optimizer step closed since the last call, it gets the
        loss and targets gathered since (the loss stays on the device: the Probe reads it
        with the next step's norms)."""
        probe = self.probe
        if probe is None or probe.step == self._steps_seen:
            return
        self._steps_seen = probe.step
        loss: torch.Tensor | float = math.nan if self._loss is None else self._loss
        probe.record_loss(loss)
        for targets in self._targets:  # each micro-batch's, as the Probe counts them
            try:
                probe.record_loss(loss, targets=targets)
            except (TypeError, ValueError):  # not one target per example: the loss stays
                break
        self._loss, self._targets = None, []

    def finish(self, is_main: bool = True) -> list[Finding]:
        """Detach, judge, and write the report on the main process when given a directory."""
        probe = self.probe
        if probe is None:
            self.message = NO_STEP
            return []
        self.step_maybe_ended()
        probe.detach()
        trace = probe.trace
        if trace.n_steps == 0:
            self.message = NO_STEP
            warnings.warn(f"deepdoctor: {NO_STEP}", stacklevel=3)
            return []
        history = History(task=trace.facts.task or "classification", steps=trace.n_steps)
        history.loss = [float(v) for v in trace.loss()]
        self.diagnosis = Diagnosis(
            findings=sort_findings(detect(trace)),
            trace=trace,
            history=history,
            coverage=coverage(trace),
            stop_reason=trace.facts.stop_reason,
        )
        if self.report_dir is not None and is_main:
            self.diagnosis.save(self.report_dir)
        return self.diagnosis.findings

    @property
    def trace(self) -> Trace | None:
        return None if self.probe is None else self.probe.trace

    @property
    def findings(self) -> list[Finding]:
        return [] if self.diagnosis is None else self.diagnosis.findings

    def metrics(self) -> dict[str, float]:
        """The findings as numbers, for loggers: the count of problems, and per kind the
        severity (1 info, 2 warning, 3 critical)."""
        out: dict[str, float] = {
            "deepdoctor/problems": float(sum(f.is_problem for f in self.findings))
        }
        for f in self.findings:
            key = f"deepdoctor/{f.kind}"
            out[key] = max(out.get(key, 0.0), float(SEVERITY_CODE.get(f.severity, 0)))
        return out

    def lines(self) -> list[str]:
        """One line per finding (or the message), for a framework's log."""
        if self.message is not None:
            return [f"deepdoctor: {self.message}"]
        if not self.findings:
            return ["deepdoctor: no findings"]
        return [f"deepdoctor: {f.severity} {f.kind}: {f.summary}" for f in self.findings]


class WatchResults:
    """What both callbacks expose after a fit, read from their ``_watch``."""

    _watch: Watch

    @property
    def trace(self) -> Trace | None:
        return self._watch.trace

    @property
    def findings(self) -> list[Finding]:
        return self._watch.findings

    @property
    def diagnosis(self) -> Diagnosis | None:
        """The findings with the trace behind them, as ``dd.diagnose`` returns them."""
        return self._watch.diagnosis

    @property
    def message(self) -> str | None:
        """What the end of the run said instead of findings (a run with no step)."""
        return self._watch.message

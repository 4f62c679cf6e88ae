"""The figures every compressed model is measured by, the same way for every method.

- connections: nonzero entries of the weight tensors (parameters with two or more axes, as
  ``deepdoctor.complexity`` counts them), so a pruned zero is a connection removed;
- parameters: every entry of every parameter, zero or not;
- bytes: the length of ``torch.save(model.state_dict())``, what a user ships;
- latency: CPU milliseconds per forward of one validation batch in eval mode under
  ``torch.no_grad``, on one thread: the median of ``torch.utils.benchmark.Timer``'s
  ``blocked_autorange`` blocks (each block times many calls and divides, so the clock's
  resolution does not matter; the median resists a neighbour's burst of load).
"""

from __future__ import annotations

import io
from typing import Any

import torch
from torch import nn
from torch.utils import benchmark

from ..training import evaluate

LATENCY_HOW = (
    "median of torch.utils.benchmark.Timer.blocked_autorange blocks, one thread, eval mode, "
    "torch.no_grad, one validation batch"
)


def dense(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor of the values (torchao's int8 tensors dequantise themselves)."""
    if type(t) is not torch.Tensor and hasattr(t, "dequantize"):
        return t.dequantize()
    return t.detach()


def weight_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The connection-carrying tensors: parameters with two or more axes."""
    return [p for p in model.parameters() if p.dim() >= 2]


def connections(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(dense(p))) for p in weight_tensors(model))


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def saved_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return len(buffer.getvalue())


def latency_ms(model: nn.Module, batch: torch.Tensor, seconds: float) -> float:
    """Milliseconds per forward of ``batch``; see the module docstring for how."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            timer = benchmark.Timer(
                stmt="model(batch)", globals={"model": model, "batch": batch}, num_threads=1
            )
            return float(timer.blocked_autorange(min_run_time=seconds).median) * 1e3
    finally:
        model.train(was_training)


def validation(
    model: nn.Module, val: tuple[torch.Tensor, torch.Tensor], loss_fn: Any, task: str
) -> tuple[float, float]:
    """Validation loss and accuracy (NaN for regression), by the training loop's evaluate."""
    return evaluate(model, val[0], val[1], loss_fn, task)

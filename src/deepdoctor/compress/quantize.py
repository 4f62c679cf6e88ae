"""Post-training int8 quantisation with torchao (``torch.ao.quantization`` is deprecated).

Two configurations, both on every ``nn.Linear`` (torchao's ``quantize_`` skips the rest):
``Int8WeightOnlyConfig`` stores weights as int8 with a scale per output row and computes in
float; ``Int8DynamicActivationInt8WeightConfig`` also quantises each batch's activations on
the fly. No fine-tune. The speed is measured, not assumed: on a CPU without fast int8
kernels the quantised model can be slower than float32, and the point says so.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from torch import nn

from .context import Context, Skip
from .measure import connections, latency_ms
from .points import Point

CONFIGS = {
    "int8 weight-only": "Int8WeightOnlyConfig",
    "int8 dynamic activations + int8 weights": "Int8DynamicActivationInt8WeightConfig",
}
DEFAULT_STRENGTHS: tuple[float, ...] = ()  # nothing to sweep: one point per configuration


def _torchao() -> Any:
    # torchao logs each optional CUDA kernel library it cannot load; on a CPU that is noise.
    quiet = logging.getLogger("torchao")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            import torchao.quantization as q
    except ImportError as exc:
        raise Skip(f"torchao is not installed ({exc}); pip install 'deepdoctor[compress]'") from exc
    finally:
        quiet.setLevel(level)
    return q


def quantized(model: nn.Module, config_name: str) -> nn.Module:
    q = _torchao()
    try:
        q.quantize_(model, getattr(q, config_name)())
    except Exception as exc:  # torchao raises assorted types for layouts it cannot handle
        raise Skip(f"torchao could not quantise this model ({type(exc).__name__}: {exc})") from exc
    return model


def run(ctx: Context, strengths: Sequence[float]) -> Iterator[Point]:
    del strengths  # int8 is one setting per configuration
    if not any(isinstance(m, nn.Linear) for m in ctx.teacher.modules()):
        raise Skip(
            "torchao's int8 configurations quantise nn.Linear layers and this model has none"
        )
    kept = connections(ctx.teacher)  # quantising changes the precision, not the connections
    for setting, config_name in CONFIGS.items():
        model = quantized(ctx.copy_teacher(), config_name)
        try:
            point = ctx.point("quantize", setting, None, model, connections=kept)
        except Exception as exc:
            raise Skip(
                f"the model quantised by torchao ({setting}) failed to run "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        # the float model timed right after, so both see the same load on the machine
        float_ms = latency_ms(ctx.teacher, ctx.batch, ctx.timing)
        point.details = {"config": config_name, "float32_latency_ms": float_ms}
        if point.latency_ms > float_ms:
            point.note = (
                f"int8 is slower than float32 on this CPU: {point.latency_ms:.3g} ms against "
                f"{float_ms:.3g} ms per batch"
            )
        yield point

"""Structured pruning: whole neurons and channels removed, so the model really shrinks.

Torch-Pruning (Fang et al. 2023, DepGraph) traces the model once and groups the layers whose
shapes depend on each other (a Linear's outputs, the next layer's inputs, a norm between
them), so removing a channel removes it everywhere it appears. Channels are ranked by the L2
norm of their weights; ``strength`` is the fraction removed from every layer but the output
layer, which keeps one unit per class. Each strength starts from the trained model and is
fine-tuned.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .context import Context, Skip
from .points import Point

DEFAULT_STRENGTHS = (0.25, 0.5, 0.75)
LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


def output_layers(model: nn.Module, batch: torch.Tensor) -> list[nn.Module]:
    """The weight layers whose outputs are the model's: the last one the forward calls."""
    called: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, args, out: called.append(mod))
        for m in model.modules()
        if isinstance(m, LAYERS)
    ]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for h in hooks:
            h.remove()
    return called[-1:]


def shrink(model: nn.Module, batch: torch.Tensor, strength: float) -> nn.Module:
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    try:
        pruner = tp.pruner.MetaPruner(
            model,
            batch,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=strength,
            ignored_layers=output_layers(model, batch),
        )
        pruner.step()
    except Exception as exc:  # Torch-Pruning's own errors carry no common type
        raise Skip(
            f"Torch-Pruning could not prune this model ({type(exc).__name__}: {exc})"
        ) from exc
    try:
        with torch.no_grad():
            model(batch)
    except Exception as exc:
        raise Skip(
            "after Torch-Pruning removed channels the model's forward failed "
            f"({type(exc).__name__}: {exc}); a forward with sizes written into it (a view or "
            "reshape to a fixed width) cannot be pruned structurally"
        ) from exc
    model.train(was_training)
    return model


def run(ctx: Context, strengths: Sequence[float]) -> Iterator[Point]:
    if not any(isinstance(m, LAYERS) for m in ctx.teacher.modules()):
        raise Skip("structured pruning needs Linear or Conv layers and this model has none")
    before = sum(p.numel() for p in ctx.teacher.parameters())
    for strength in sorted(strengths):
        model = shrink(ctx.copy_teacher(), ctx.batch, strength)
        after = sum(p.numel() for p in model.parameters())
        if after >= before:
            raise Skip(
                "Torch-Pruning found no channel it could remove (every weight layer is an "
                "output layer or tied to one)"
            )
        spent = ctx.finetune(model, label=f"prune_structured {strength:.0%}")
        widths = {
            name: (m.out_features if isinstance(m, nn.Linear) else m.out_channels)
            for name, m in model.named_modules()
            if isinstance(m, LAYERS)
        }
        yield ctx.point(
            "prune_structured",
            f"{strength:.0%} of channels removed",
            strength,
            model,
            finetune_steps=spent,
            details={"widths": widths},
        )

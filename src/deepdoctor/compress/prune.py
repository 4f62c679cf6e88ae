"""Global magnitude pruning, iterative with fine-tuning (Han et al. 2015).

The smallest weights across every Linear and Conv layer together are masked with
``torch.nn.utils.prune.global_unstructured`` (L1, i.e. magnitude), the network is fine-tuned
with the masks in place, and the sparsity is raised to the next strength of the sweep on the
same model: prune, retrain, prune more. Each point is a copy with the masks made permanent
(``prune.remove``): real zeros in plain weight tensors, no hooks left.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

from torch import nn
from torch.nn.utils import prune

from .context import Context, Skip
from .points import Point

DEFAULT_STRENGTHS = (0.5, 0.75, 0.9, 0.95)
PRUNABLE = (nn.Linear, nn.modules.conv._ConvNd)


def prunable(model: nn.Module) -> list[tuple[nn.Linear | nn.modules.conv._ConvNd, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]


def prune_to(model: nn.Module, sparsity: float) -> None:
    """Mask the smallest weights of ``model`` globally until ``sparsity`` of them are zero
    (one shot; ``run`` is the iterative schedule). The masks stay on while it fine-tunes."""
    prune.global_unstructured(prunable(model), pruning_method=prune.L1Unstructured, amount=sparsity)


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold the masks into plain weight tensors: real zeros, no hooks left."""
    for module, name in prunable(model):
        if prune.is_pruned(module):
            prune.remove(module, name)
    return model


def run(ctx: Context, strengths: Sequence[float]) -> Iterator[Point]:
    model = ctx.copy_teacher()
    targets = prunable(model)
    if not targets:
        raise Skip("global magnitude pruning needs Linear or Conv layers and this model has none")
    total = sum(m.weight.numel() for m, _ in targets)
    pruned = 0
    spent = 0
    for strength in sorted(strengths):
        # global_unstructured's amount counts the weights still unpruned: remove just enough
        # of them to reach this strength overall.
        goal = round(strength * total)
        prune.global_unstructured(
            targets, pruning_method=prune.L1Unstructured, amount=max(0, goal - pruned)
        )
        pruned = goal
        spent += ctx.finetune(model, label=f"prune {strength:.0%}")
        snapshot = make_permanent(copy.deepcopy(model))
        yield ctx.point(
            "prune",
            f"{strength:.0%} of weights removed",
            strength,
            snapshot,
            finetune_steps=spent,
            details={"sparsity": strength, "weights": total},
        )

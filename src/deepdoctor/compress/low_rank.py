"""Low-rank factorisation: each Linear or Conv weight replaced by two thinner layers from its
truncated SVD (Denton et al. 2014; Jaderberg et al. 2014 for convolutions).

A weight W (out x in, a kernel flattened to out x in*k) is U S V^T. Keeping the r largest
singular values keeps the fraction sum(s[:r]^2) / sum(s^2) of its energy (squared Frobenius
norm); ``strength`` is the energy allowed to go, so rank r is the smallest that retains at
least 1 - strength. The layer becomes ``Linear(in, r, bias=False)`` then ``Linear(r, out)``
(a Conv: the same kernel with r outputs, then a 1x1 conv), each carrying sqrt(S) -- but only
where r (in + out) is fewer weights than in x out; elsewhere the layer stays as it was.
Then the model is fine-tuned.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .context import Context, Skip
from .points import Point

DEFAULT_STRENGTHS = (0.02, 0.1, 0.25)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def rank_for(weight: torch.Tensor, strength: float) -> int:
    """The smallest rank keeping at least ``1 - strength`` of the weight's energy."""
    s = torch.linalg.svdvals(weight.detach().flatten(1).double())
    energy = torch.cumsum(s**2, 0) / (s**2).sum()
    return int(torch.searchsorted(energy, torch.tensor(1.0 - strength, dtype=energy.dtype))) + 1


def _factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(weight.detach().flatten(1), full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]  # (out, r), (r, in*k)


Layer = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d


def factorise(module: Layer, rank: int) -> nn.Sequential:
    """``module`` as two layers of rank ``rank`` (the product equals the truncated SVD)."""
    out_w, in_w = _factors(module.weight, rank)
    first: Layer
    second: Layer
    if isinstance(module, nn.Linear):
        first = nn.Linear(module.in_features, rank, bias=False)
        second = nn.Linear(rank, module.out_features, bias=module.bias is not None)
    else:
        conv: Any = type(module)  # Conv1d, 2d or 3d: the same arguments
        first = conv(
            module.in_channels,
            rank,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            bias=False,
            padding_mode=module.padding_mode,
        )
        second = conv(rank, module.out_channels, 1, bias=module.bias is not None)
    with torch.no_grad():
        first.weight.copy_(in_w.reshape(first.weight.shape))
        second.weight.copy_(out_w.reshape(second.weight.shape))
        if module.bias is not None and second.bias is not None:
            second.bias.copy_(module.bias)
    return nn.Sequential(first, second)


def candidates(model: nn.Module) -> list[tuple[str, Layer]]:
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) or (isinstance(m, CONVS) and m.groups == 1)
    ]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def factorise_model(model: nn.Module, strength: float) -> dict[str, dict[str, int]]:
    """Factorise every layer where it saves weights; return {layer: {rank, full_rank}}."""
    ranks = {}
    for name, module in candidates(model):
        rows, cols = module.weight.shape[0], module.weight[0].numel()
        rank = rank_for(module.weight, strength)
        if rank * (rows + cols) < rows * cols:
            _replace(model, name, factorise(module, rank))
            ranks[name] = {"rank": rank, "full_rank": min(rows, cols)}
    return ranks


def run(ctx: Context, strengths: Sequence[float]) -> Iterator[Point]:
    if not candidates(ctx.teacher):
        raise Skip("low-rank factorisation needs Linear or Conv layers and this model has none")
    for strength in sorted(strengths):
        model = ctx.copy_teacher()
        ranks = factorise_model(model, strength)
        note = "" if ranks else "no layer's rank was low enough to save weights; left as it was"
        spent = ctx.finetune(model, label=f"low_rank {strength:.0%}") if ranks else 0
        yield ctx.point(
            "low_rank",
            f"{1 - strength:.0%} of the energy kept",
            strength,
            model,
            finetune_steps=spent,
            details={"energy_kept": 1 - strength, "ranks": ranks},
            note=note,
        )

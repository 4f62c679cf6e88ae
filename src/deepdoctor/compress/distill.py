"""Knowledge distillation (Hinton, Vinyals & Dean 2015): a smaller student learns the trained
teacher's soft targets, beside the same student trained on the labels alone.

The student is built by ``deepdoctor.models``: the experiment's own builder with a smaller
``width`` when it is a ``models.spec(...)``, else a one-hidden-layer MLP (flat inputs) or a
two-layer CNN (images, signals), its width the largest whose parameters fit in ``1 -
strength`` of the teacher's. Its loss is ``SOFT_WEIGHT * T^2 * KL(teacher_T || student_T) +
(1 - SOFT_WEIGHT) * cross-entropy``, where ``_T`` is softmax at temperature T; the T^2 keeps
the soft term's gradients on the scale of the hard one's (the paper's section 2). Both
students start from the same seed and train for the experiment's full steps in its loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import models
from .context import Context, Skip
from .points import Point

DEFAULT_STRENGTHS = (0.9,)
DEFAULT_TEMPERATURE = 4.0  # Hinton et al. found 2.5-4 best for small students on MNIST
SOFT_WEIGHT = 0.9  # "a considerably lower weight on the second (hard) objective"
MAX_WIDTH = 4096


def student_family(ctx: Context) -> Callable[[int], nn.Module]:
    """A function width -> a fresh student of that width."""
    builder = ctx.experiment.model
    if isinstance(builder, models.BuilderSpec) and "width" in builder.kwargs:
        return lambda width: builder.replace(width=width)()
    shape = tuple(ctx.val[0].shape[1:])
    with torch.no_grad():
        n_out = int(ctx.teacher.eval()(ctx.batch[:1]).shape[-1])
    if len(shape) == 1:
        return lambda width: models.mlp(shape[0], n_out, depth=1, width=width)
    if len(shape) in (2, 3):
        return lambda width: models.cnn(shape, n_out, depth=2, width=width)
    raise Skip(
        f"distillation builds its student with deepdoctor.models and cannot for inputs of "
        f"shape {shape}; give the experiment a models.spec(...) builder with a width"
    )


def widest_within(family: Callable[[int], nn.Module], budget: int) -> int:
    """The largest width whose student has at most ``budget`` parameters (at least 1)."""
    low, high = 1, MAX_WIDTH
    while low < high:
        mid = (low + high + 1) // 2
        if models.n_parameters(family(mid)) <= budget:
            low = mid
        else:
            high = mid - 1
    return low


class Distilling(nn.Module):
    """The student during training; its forward also asks the frozen teacher."""

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        self.student = student
        self._teacher = (teacher,)  # a tuple keeps the teacher's weights out of the optimizer
        self.soft: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.soft = self._teacher[0].eval()(x)
        return self.student(x)


def distillation_loss(
    wrapper: Distilling, temperature: float
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        hard = F.cross_entropy(out, y)
        if not wrapper.training or wrapper.soft is None:
            return hard  # evaluation: the plain validation loss, comparable across points
        soft = F.kl_div(
            F.log_softmax(out / temperature, dim=1),
            F.log_softmax(wrapper.soft / temperature, dim=1),
            log_target=True,
            reduction="batchmean",
        )
        return SOFT_WEIGHT * temperature**2 * soft + (1 - SOFT_WEIGHT) * hard

    return loss


def _student(family: Callable[[int], nn.Module], width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return family(width)


def run(ctx: Context, strengths: Sequence[float], temperature: float) -> Iterator[Point]:
    if ctx.task != "classification":
        raise Skip(
            f"distillation from soft targets needs class-index targets; this task is {ctx.task}"
        )
    family = student_family(ctx)
    teacher_params = models.n_parameters(ctx.teacher, trainable_only=False)
    exp = ctx.experiment
    for strength in sorted(strengths):
        width = widest_within(family, int((1 - strength) * teacher_params))
        details = {"width": width, "temperature": temperature, "teacher_parameters": teacher_params}
        wrapper = Distilling(_student(family, width, exp.seed), ctx.teacher)
        label = f"distill {strength:.0%}" if ctx.progress else False
        exp.replace(loss_fn=distillation_loss(wrapper, temperature)).run(
            model=wrapper, progress=label
        )
        yield ctx.point(
            "distill",
            f"student width {width}, soft targets at T={temperature:g}",
            strength,
            wrapper.student,
            finetune_steps=exp.steps,
            details={**details, "targets": "soft"},
        )
        plain = _student(family, width, exp.seed)
        exp.run(model=plain, progress=f"labels-only {strength:.0%}" if ctx.progress else False)
        yield ctx.point(
            "distill",
            f"student width {width}, labels only (reference)",
            strength,
            plain,
            finetune_steps=exp.steps,
            details={**details, "targets": "labels"},
        )

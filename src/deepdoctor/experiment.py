"""Experiment: everything needed to train once, so a run can be repeated from scratch.

``model`` is a builder (a callable returning a fresh ``nn.Module``) and ``optimizer`` a
factory ``params -> optimizer``, so that treat can make fresh copies and train each
candidate from the same seed. A CLI TARGET ``path/to/file.py:function`` names a function that
returns an Experiment (``deepdoctor.targets`` loads it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .checks import check_int
from .pretrained import PretrainedSpec
from .training import History, OptimizerSpec, as_tensors, is_loader, train


@dataclass
class Experiment:
    """What to train: a model builder, data, loss, optimizer factory, and the budget.

    >>> import deepdoctor as dd
    >>> split = dd.data.load("digits")
    >>> exp = dd.Experiment(lambda: dd.models.mlp(64, 10, depth=2), split.train, split.val,
    ...                     steps=50)
    >>> exp.run().final["val_accuracy"] > 0.5
    True
    """

    model: Callable[[], nn.Module]
    train: Any
    val: Any = None
    loss_fn: Callable[..., torch.Tensor] | None = None
    optimizer: OptimizerSpec = None
    steps: int = 200
    batch_size: int = 64
    seed: int = 0
    # How the loop trains; treat's remedies change these as well as the model and data.
    clip_grad: float | None = None
    schedule: str = "constant"
    early_stopping: int | None = None
    eval_every: int | None = None
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None
    name: str = "experiment"
    description: str = ""
    n_classes: int | None = None
    # fine-tuning: the pretrained modules' names or the loaded state dict (deepdoctor.pretrained)
    pretrained: PretrainedSpec = None
    meta: dict[str, Any] = field(default_factory=dict)
    # a warmup schedule's length in steps; None: ``training.WARMUP_FRACTION`` of the run
    # (last, so that positional arguments written before it keep their meaning)
    warmup_steps: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.model, nn.Module):
            raise TypeError(
                "Experiment.model must be a builder (a function returning a fresh nn.Module), "
                "not a module: write model=lambda: MyNet() so fresh copies can be made"
            )
        if not callable(self.model):
            raise TypeError(f"Experiment.model must be callable, got {type(self.model).__name__}")
        if isinstance(self.optimizer, torch.optim.Optimizer):
            raise TypeError(
                "Experiment.optimizer must be a factory params -> optimizer, e.g. "
                "lambda p: torch.optim.SGD(p, lr=0.1), not an optimizer instance"
            )
        self.steps = check_int("steps", self.steps, minimum=1)
        self.batch_size = check_int("batch_size", self.batch_size, minimum=1)
        self.seed = check_int("seed", self.seed, minimum=0)
        if not is_loader(self.train):
            self.train = as_tensors(self.train, "train")
        if self.val is not None and not is_loader(self.val):
            self.val = as_tensors(self.val, "val")

    def build(self) -> nn.Module:
        """A fresh model, its weights drawn from ``seed``."""
        torch.manual_seed(self.seed)
        model = self.model()
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"the model builder of {self.name!r} returned {type(model).__name__}, "
                "not an nn.Module"
            )
        return model

    def replace(self, **changes: Any) -> Experiment:
        return replace(self, **changes)

    def run(
        self,
        model: nn.Module | None = None,
        probe: Any = None,
        progress: bool | str = False,
        steps: int | None = None,
        seed: int | None = None,
        callbacks: Sequence[Any] = (),
    ) -> History:
        """Train once (a fresh model unless one is given) and return the History;
        ``callbacks`` as ``training.train``'s."""
        model = model if model is not None else self.build()
        return train(
            model,
            self.train,
            self.val,
            loss_fn=self.loss_fn,
            optimizer=self.optimizer,
            steps=steps or self.steps,
            batch_size=self.batch_size,
            seed=self.seed if seed is None else seed,
            clip_grad=self.clip_grad,
            schedule=self.schedule,
            warmup_steps=self.warmup_steps,
            early_stopping=self.early_stopping,
            eval_every=self.eval_every,
            probe=probe,
            progress=progress,
            augment=self.augment,
            callbacks=callbacks,
        )

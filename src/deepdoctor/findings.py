"""Finding and the vocabularies every part of deepdoctor speaks: kinds, severities, remedies.

The names here are a public contract (users' scripts and CI gates match on them), so they
only ever grow; a name never changes its meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .trace import json_ready

KINDS: dict[str, str] = {
    "vanishing_gradients": "gradient norms shrink geometrically towards the input; "
    "early layers barely learn",
    "exploding_gradients": "gradient norms grow geometrically, or jump by orders of magnitude",
    "saturated_units": "sigmoid / tanh units sit in their flat tails",
    "dead_units": "ReLU-family units output zero for every input",
    "nonfinite": "NaN or Inf in loss, activations, gradients or weights",
    "diverging_loss": "the loss grows, or blows up",
    "oscillating_loss": "the loss swings without settling",
    "stalled_loss": "the loss hardly moves: plateau, or a learning rate too small",
    "bad_init_loss": "loss at initialisation far from what a calibrated start gives "
    "(ln of classes)",
    "unscaled_inputs": "input features far from zero mean / unit scale",
    "class_imbalance": "a few classes dominate the targets",
    "overfitting": "training loss falls while validation loss rises; large generalisation gap",
    "underfitting": "training and validation both stay poor: too little capacity or signal",
    "still_improving": "training ended while the loss was still clearly falling",
    "pretrained_drift": "fine-tuning moves the pretrained layers' weights by a large fraction "
    "of their norm in its first steps, wiping out what pretraining learned",
}

SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")

REMEDIES: tuple[str, ...] = (
    "he_init",
    "xavier_init",
    "orthogonal_init",
    "relu_activation",
    "leaky_relu_activation",
    "batch_norm",
    "layer_norm",
    "residual",
    "gradient_clipping",
    "lower_lr",
    "raise_lr",
    "lr_warmup",
    "adam",
    "standardize_inputs",
    "class_weights",
    "dropout",
    "weight_decay",
    "early_stopping",
    "data_augmentation",
    "more_capacity",
    "less_capacity",
    "train_longer",
    "discriminative_lr",
    "freeze_pretrained",
)


@dataclass
class Finding:
    """One named problem with the numbers that justify it and what to do about it."""

    kind: str
    severity: str
    summary: str
    layers: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    remedies: list[str] = field(default_factory=list)
    caused_by: str | None = None  # the kind of the finding that explains this one

    def __post_init__(self) -> None:
        for label, kind in (("finding kind", self.kind), ("caused_by kind", self.caused_by)):
            if kind is not None and kind not in KINDS:
                raise ValueError(f"unknown {label} {kind!r}; the kinds are: {', '.join(KINDS)}")
        if self.severity not in SEVERITIES:
            raise ValueError(
                f"unknown severity {self.severity!r}; use one of: {', '.join(SEVERITIES)}"
            )
        unknown = [r for r in self.remedies if r not in REMEDIES]
        if unknown:
            raise ValueError(f"unknown remedies {unknown}; the remedies are: {', '.join(REMEDIES)}")

    @property
    def is_problem(self) -> bool:
        return self.severity in ("warning", "critical")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "summary": self.summary,
            "layers": list(self.layers),
            "evidence": json_ready(self.evidence),
            "remedies": list(self.remedies),
            "caused_by": self.caused_by,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        return cls(
            kind=data["kind"],
            severity=data["severity"],
            summary=data["summary"],
            layers=list(data.get("layers", [])),
            evidence=dict(data.get("evidence", {})),
            remedies=list(data.get("remedies", [])),
            caused_by=data.get("caused_by"),
        )


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity)


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Most severe first; within a severity, in the order of KINDS."""
    kind_order = list(KINDS)
    return sorted(findings, key=lambda f: (-severity_rank(f.severity), kind_order.index(f.kind)))

"""Result dicts for the report tests: a real probed run, hand-built cases, a huge synthetic one.

The report draws from dicts only, so these stand in for Diagnosis / Checkup / Treatment
``to_dict()`` without depending on those modules.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

import deepdoctor as dd
from deepdoctor.training import train

EVIL = "<script>alert(1)</script>"


def probed_run(
    depth: int = 6, steps: int = 40, activation: str = "sigmoid", seed: int = 0
) -> tuple[dd.Trace, dd.History]:
    """A small real run on digits under the Probe (every step sampled)."""
    split = dd.data.load("digits", subset=400)
    torch.manual_seed(seed)
    model = dd.models.mlp(64, 10, depth=depth, width=32, activation=activation)
    with dd.Probe(model, every=2) as probe:
        history = train(
            model,
            split.train,
            split.val,
            steps=steps,
            batch_size=32,
            seed=seed,
            eval_every=10,
            probe=probe,
        )
    return probe.trace, history


def diagnosis_dict(
    trace: dd.Trace, history: dd.History, findings: list[dd.Finding] | None = None
) -> dict[str, Any]:
    findings = (
        findings
        if findings is not None
        else [
            dd.Finding(
                "vanishing_gradients",
                "critical",
                "Gradient norms shrink 40x from the output layer to the first layer.",
                layers=trace.layers[:2],
                evidence={"first_to_last_ratio": 0.025, "per_layer_factor": 0.48},
                remedies=["relu_activation", "he_init", "batch_norm"],
            ),
            dd.Finding(
                "stalled_loss",
                "warning",
                "The loss fell by only 2% in 40 steps.",
                evidence={"relative_drop": 0.02},
                remedies=["raise_lr", "adam"],
            ),
        ]
    )
    return {
        "schema": "deepdoctor.diagnosis",
        "schema_version": 1,
        "healthy": not any(f.is_problem for f in findings),
        "findings": [f.to_dict() for f in findings],
        "experiment": {
            "name": "sigmoid-mlp-digits",
            "description": "a small sigmoid MLP",
            "steps": history.steps,
            "seed": 0,
            "batch_size": 32,
        },
        "stopped": {"reason": history.stopped, "step": history.stop_step},
        "history": history.to_dict(),
        "trace": trace.to_dict(),
        "learning_speed": trace.learning_speed_at_ends(),
    }


def real_diagnosis() -> dict[str, Any]:
    return diagnosis_dict(*probed_run())


def checkup_dict(n_layers: int = 8, names: list[str] | None = None) -> dict[str, Any]:
    """A hand-built checkup of a sigmoid MLP whose gradient halves at every layer."""
    names = names or [f"net.{2 * i}" for i in range(n_layers)]
    layers = []
    for i, name in enumerate(names):
        grad = 0.5 ** (len(names) - 1 - i)
        layers.append(
            {
                "name": name,
                "type": "Linear",
                "out_mean": 0.01 * i,
                "out_std": 1.0 / (1 + i),
                "grad_norm": grad,
                "grad_to_weight": grad / 4.0,
                "dead_frac": None,
                "saturated_frac": 0.1 * i / len(names),
            }
        )
    complexity_layers = [
        {
            "name": n,
            "type": "Linear",
            "params": 64 * 64 + 64,
            "connections": 64 * 64,
            "reuse": 1,
            "flops": 2 * 64 * 64,
        }
        for n in names
    ]
    return {
        "schema": "deepdoctor.checkup",
        "schema_version": 1,
        "healthy": False,
        "findings": [
            dd.Finding(
                "bad_init_loss",
                "warning",
                "The loss at initialisation is 3.1, above ln(10) = 2.30.",
                evidence={"loss": 3.1, "expected": math.log(10)},
                remedies=["xavier_init"],
            ).to_dict()
        ],
        "layers": layers,
        "input": {"mean": 0.01, "std": 0.99, "feature_std_max": 1.7},
        "loss": {"value": 3.1, "expected": math.log(10), "n_classes": 10, "logit_std": 1.4},
        "depth": {
            "grad_rate_per_layer": 0.5,
            "trainable_depth": 4,
            "current_depth": len(names),
            "first_to_last_ratio": 0.5 ** (len(names) - 1),
        },
        "complexity": {
            "layers": complexity_layers,
            "total": {
                "params": sum(c["params"] for c in complexity_layers),
                "connections": sum(c["connections"] for c in complexity_layers),
                "flops": sum(c["flops"] for c in complexity_layers),
                "activation_bytes": 4 * 64 * len(names),
            },
            "params_per_sample": 26.0,
        },
    }


def _history(losses: list[float], accs: list[float]) -> dict[str, Any]:
    evals = [
        {
            "step": float(10 * (i + 1)),
            "train_loss": loss,
            "train_accuracy": acc,
            "val_loss": loss * 1.1,
            "val_accuracy": acc - 0.02,
        }
        for i, (loss, acc) in enumerate(zip(losses, accs, strict=True))
    ]
    per_step = [losses[min(s // 10, len(losses) - 1)] for s in range(10 * len(losses))]
    return history_dict(per_step, evals)


def history_dict(loss: list[float], evals: list[dict[str, float]]) -> dict[str, Any]:
    """``History.to_dict()`` of a classification run that completed."""
    return {
        "task": "classification",
        "steps": len(loss),
        "loss": loss,
        "lr": [],
        "grad_norm": [],
        "clipped": [],
        "evals": evals,
        "stopped": "completed",
        "stop_step": None,
        "best_step": None,
    }


def treatment_dict() -> dict[str, Any]:
    """A hand-built treatment: he_init + relu_activation kept, adam tried and not kept."""
    before = {"train_loss": 2.30, "val_loss": 2.31, "val_accuracy": 0.10}
    after = {"train_loss": 0.21, "val_loss": 0.35, "val_accuracy": 0.91}
    vanishing = dd.Finding(
        "vanishing_gradients",
        "critical",
        "Gradient norms shrink 1e6x from the output to the input.",
        layers=["net.0"],
        evidence={"first_to_last_ratio": 1e-6},
        remedies=["relu_activation", "he_init", "adam"],
    )
    return {
        "schema": "deepdoctor.treatment",
        "schema_version": 1,
        "healthy": True,
        "findings": [],
        "findings_before": [vanishing.to_dict()],
        "experiment": {
            "name": "sigmoid-mlp50-digits",
            "description": "deep sigmoid MLP",
            "steps": 60,
            "seed": 0,
            "batch_size": 64,
        },
        "message": "kept relu_activation+he_init: validation accuracy 10.0% -> 91.0%",
        "applied": ["relu_activation", "he_init"],
        "before": before,
        "after": after,
        "noise": 0.01,
        "compute": 2.6,
        "interrupted": False,
        "trials": [
            {
                "remedies": ["relu_activation", "he_init"],
                "stage": "verify",
                "round": 1,
                "status": "kept",
                "reason": None,
                "steps": 60,
                "metrics": after,
                "score": 0.91,
                "baseline_score": 0.10,
                "passed": True,
                "kept": True,
                "error": None,
                "prescription": None,
            },
            {
                "remedies": ["adam"],
                "stage": "screen",
                "round": 1,
                "status": "no_gain",
                "reason": None,
                "steps": 15,
                "metrics": {"val_accuracy": 0.11},
                "score": 0.11,
                "baseline_score": 0.10,
                "passed": False,
                "kept": False,
                "error": None,
                "prescription": None,
            },
        ],
        "snippet": "# deepdoctor treat: relu_activation, he_init\n",
        "history_before": _history(
            [2.31, 2.30, 2.30, 2.30, 2.30, 2.30], [0.10, 0.10, 0.11, 0.10, 0.10, 0.10]
        ),
        "history_after": _history(
            [1.9, 1.1, 0.6, 0.4, 0.3, 0.21], [0.35, 0.62, 0.80, 0.86, 0.89, 0.93]
        ),
    }


def synthetic_diagnosis(
    n_steps: int, n_layers: int, act_every: int = 16, seed: int = 0
) -> dict[str, Any]:
    """A diagnosis dict of ``n_steps`` x ``n_layers`` built cheaply.

    Rows are shared list objects (a pool of distinct rows reused down the steps), so a
    100,000 x 1,000 trace costs a few megabytes rather than gigabytes, while the report
    still has to read every one of its 10^8 cells.
    """
    rng = np.random.default_rng(seed)
    pool = 64
    depth_profile = np.logspace(-6, 0, n_layers)  # vanishing towards the input
    grad_rows = [list(depth_profile * rng.lognormal(0, 0.3, n_layers)) for _ in range(pool)]
    grad_rows[5][: n_layers // 10] = [None] * (n_layers // 10)  # a gap to draw
    weight_rows = [list(np.full(n_layers, 3.0)) for _ in range(2)]
    n_acts = n_layers
    act_steps = list(range(0, n_steps, act_every))
    dead = [list(np.clip(rng.normal(0.1, 0.05, n_acts), 0, 1)) for _ in range(pool)]
    sat = [[None] * n_acts]
    acts = {
        "steps": act_steps,
        "act_mean": [sat[0]] * len(act_steps),
        "act_std": [sat[0]] * len(act_steps),
        "dead_frac": [dead[i % pool] for i in range(len(act_steps))],
        "saturated_frac": [sat[0]] * len(act_steps),
        "nonfinite": [sat[0]] * len(act_steps),
    }
    names = [f"blocks.{i}.linear" for i in range(n_layers)]
    act_names = [f"blocks.{i}.relu" for i in range(n_acts)]
    loss = list(2.3 * np.exp(-np.arange(n_steps) / (n_steps / 3)) + rng.normal(0, 0.02, n_steps))
    evals = [
        {
            "step": float(s),
            "train_loss": loss[s - 1],
            "train_accuracy": 0.5,
            "val_loss": loss[s - 1] * 1.1,
            "val_accuracy": 0.48,
        }
        for s in range(n_steps // 10, n_steps + 1, n_steps // 10)
    ]
    trace = {
        "format_version": 2,
        "layers": names,
        "layer_types": dict.fromkeys(names, "Linear"),
        "act_layers": act_names,
        "act_kinds": dict.fromkeys(act_names, "relu"),
        "act_sources": dict(zip(act_names, names, strict=True)),
        "meta": {},
        "tables": {
            "steps": {"steps": list(range(n_steps)), "loss": [[v] for v in loss]},
            "layers": {
                "steps": list(range(n_steps)),
                "grad_norm_weight": [grad_rows[i % pool] for i in range(n_steps)],
                "grad_norm_bias": [grad_rows[(i + 1) % pool] for i in range(n_steps)],
                "weight_norm": [weight_rows[i % 2] for i in range(n_steps)],
            },
            "acts": acts,
        },
    }
    history = history_dict(loss, evals)
    return {
        "schema": "deepdoctor.diagnosis",
        "schema_version": 1,
        "healthy": True,
        "findings": [],
        "experiment": {
            "name": "synthetic",
            "description": "",
            "steps": n_steps,
            "seed": seed,
            "batch_size": 64,
        },
        "stopped": {"reason": "completed", "step": None},
        "history": history,
        "trace": trace,
        "learning_speed": {
            "layers": names,
            "window": 5,
            "start_steps": [0, 4],
            "end_steps": [n_steps - 5, n_steps - 1],
            "start": list(depth_profile),
            "end": list(depth_profile * 2),
        },
    }


def hand_diagnosis() -> dict[str, Any]:
    """A fixed diagnosis (no trace) for golden files: every number typed in by hand."""
    findings = [
        dd.Finding(
            "vanishing_gradients",
            "critical",
            "Gradient norms shrink 3.2e-05x from the output layer to the first.",
            layers=["net.0", "net.2", "net.4", "net.6", "net.8"],
            evidence={"first_to_last_ratio": 3.2e-5, "per_layer_factor": 0.31, "depth": 10},
            remedies=["relu_activation", "he_init", "batch_norm", "residual"],
        ),
        dd.Finding(
            "stalled_loss",
            "warning",
            "The loss fell by 0.4% over 300 steps.",
            evidence={"relative_drop": 0.004},
            remedies=["raise_lr", "adam"],
        ),
        dd.Finding(
            "still_improving",
            "info",
            "The loss was still falling at the end.",
            evidence={"recent_slope": -0.0012},
            remedies=["train_longer"],
        ),
    ]
    history = _history([2.31, 2.30, 2.30, 2.30, 2.30, 2.29], [0.10, 0.10, 0.11, 0.10, 0.11, 0.12])
    return {
        "schema": "deepdoctor.diagnosis",
        "schema_version": 1,
        "healthy": False,
        "findings": [f.to_dict() for f in findings],
        "experiment": {
            "name": "sigmoid-mlp50-digits",
            "description": "50-layer sigmoid MLP",
            "steps": 60,
            "seed": 0,
            "batch_size": 64,
        },
        "stopped": {"reason": "completed", "step": None},
        "history": history,
    }

"""edge-of-chaos: a random tanh net trains only to a depth set by its mean-field depth scale.

Schoenholz, Gilmer, Ganguli & Sohl-Dickstein (2017), Deep Information Propagation. With
weights N(0, sigma_w^2 / fan_in) and biases N(0, sigma_b^2), the pre-activation variance of a
wide net follows q <- sigma_w^2 E[tanh(sqrt(q) z)^2] + sigma_b^2 to a fixed point q*. The
correlation between two inputs approaches its fixed point c* geometrically, at the rate
chi_c = sigma_w^2 E[tanh'(u1) tanh'(u2)] (at c*); in the ordered phase c* = 1 and chi_c =
chi_1 = sigma_w^2 E[tanh'(sqrt(q*) z)^2]. Signals survive about xi_c = -1 / ln(chi_c) layers,
which diverges at the critical line chi_1 = 1, and nets train up to about 6 xi_c layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import models
from ._base import (
    Conclusion,
    Config,
    Lab,
    Row,
    Settings,
    fit,
    fmt,
    load_split,
    new_figure,
    pct,
)

QUADRATURE_POINTS = 61  # Gauss-Hermite nodes: exact to ~1e-10 for these smooth integrands
FIXED_POINT_ITERATIONS = 2000  # far more than the q and c maps need to converge
DEPTH_SCALE_MULTIPLE = 6.0  # Schoenholz et al.: nets train up to about 6 xi_c layers


@dataclass(frozen=True)
class Budget:
    """What one variant (full or quick) of this experiment runs."""

    sigma_w2: tuple[float, ...]
    sigma_b2: tuple[float, ...]
    depths: tuple[int, ...]
    width: int
    steps: int


FULL = Budget(
    sigma_w2=(0.5, 1.0, 1.5, 2.5, 4.0),
    sigma_b2=(0.05, 0.5),
    depths=(4, 8, 16, 32, 64),
    width=24,
    steps=200,
)
QUICK = Budget(sigma_w2=(0.3, 1.5), sigma_b2=(0.05,), depths=(24,), width=16, steps=200)


LR, MOMENTUM = 0.01, 0.9
BATCH = 64
TRAINABLE_ACCURACY = 0.5  # training accuracy on digits (chance 10%)


def _gauss_hermite() -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights with sum(w * f(z)) = E[f(z)] for z ~ N(0, 1)."""
    z, w = np.polynomial.hermite_e.hermegauss(QUADRATURE_POINTS)
    return z, w / math.sqrt(2 * math.pi)


def _dtanh(x: np.ndarray) -> np.ndarray:
    return 1.0 - np.tanh(x) ** 2


def fixed_point_q(sigma_w2: float, sigma_b2: float, q0: float = 1.0) -> float:
    """q*: the fixed point of the variance map, iterated from q0."""
    z, w = _gauss_hermite()
    q = q0
    for _ in range(FIXED_POINT_ITERATIONS):
        q_new = sigma_w2 * float(w @ np.tanh(math.sqrt(q) * z) ** 2) + sigma_b2
        if abs(q_new - q) < 1e-12:
            return q_new
        q = q_new
    return q


def chi_1(sigma_w2: float, sigma_b2: float) -> float:
    """chi_1 = sigma_w^2 E[tanh'(sqrt(q*) z)^2]: < 1 ordered, > 1 chaotic."""
    z, w = _gauss_hermite()
    q = fixed_point_q(sigma_w2, sigma_b2)
    return sigma_w2 * float(w @ _dtanh(math.sqrt(q) * z) ** 2)


def _correlation_rate(sigma_w2: float, sigma_b2: float) -> float:
    """chi_c at the stable correlation fixed point c* < 1 of the chaotic phase."""
    z, w = _gauss_hermite()
    z1, z2 = np.meshgrid(z, z, indexing="ij")
    w2 = np.outer(w, w)
    q = fixed_point_q(sigma_w2, sigma_b2)
    s = math.sqrt(q)
    c = 0.5
    for _ in range(FIXED_POINT_ITERATIONS):
        u2 = s * (c * z1 + math.sqrt(max(1 - c * c, 0.0)) * z2)
        c_new = (sigma_w2 * float(np.sum(w2 * np.tanh(s * z1) * np.tanh(u2))) + sigma_b2) / q
        if abs(c_new - c) < 1e-12:
            break
        c = c_new
    u2 = s * (c * z1 + math.sqrt(max(1 - c * c, 0.0)) * z2)
    return sigma_w2 * float(np.sum(w2 * _dtanh(s * z1) * _dtanh(u2)))


def depth_scale(sigma_w2: float, sigma_b2: float) -> float:
    """xi_c = -1 / ln(chi_c): how many layers a correlation between inputs survives."""
    c1 = chi_1(sigma_w2, sigma_b2)
    rate = c1 if c1 <= 1 else _correlation_rate(sigma_w2, sigma_b2)
    if rate >= 1:
        return math.inf
    return -1.0 / math.log(rate)


def mean_field_mlp(depth: int, width: int, sigma_w2: float, sigma_b2: float) -> nn.Module:
    model = models.mlp(64, 10, depth=depth, width=width, activation="tanh")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, math.sqrt(sigma_w2 / m.in_features))
                m.bias.normal_(0.0, math.sqrt(sigma_b2))
    return model


def configs(settings: Settings) -> list[Config]:
    grid = QUICK if settings.quick else FULL
    return [
        {"sigma_w2": w, "sigma_b2": b, "depth": d}
        for b in grid.sigma_b2
        for w in grid.sigma_w2
        for d in grid.depths
    ]


def run_one(config: Config, settings: Settings) -> Row:
    grid = QUICK if settings.quick else FULL
    split = load_split("digits", seed=settings.seed)
    torch.manual_seed(settings.seed)
    model = mean_field_mlp(config["depth"], grid.width, config["sigma_w2"], config["sigma_b2"])
    history = fit(
        model,
        split.train,
        split.val,
        steps=grid.steps,
        batch_size=BATCH,
        seed=settings.seed,
        optimizer=lambda p: torch.optim.SGD(p, lr=LR, momentum=MOMENTUM),
    )
    xi = depth_scale(config["sigma_w2"], config["sigma_b2"])
    train_acc = history.final["train_accuracy"]
    return {
        "chi_1": chi_1(config["sigma_w2"], config["sigma_b2"]),
        "xi_c": xi,
        "train_accuracy": train_acc,
        "val_accuracy": history.final["val_accuracy"],
        "trainable": bool(train_acc >= TRAINABLE_ACCURACY),
        "predicted_trainable": bool(config["depth"] <= DEPTH_SCALE_MULTIPLE * xi),
    }


def conclude(rows: list[Row], settings: Settings) -> Conclusion:
    agree = sum(r["trainable"] == r["predicted_trainable"] for r in rows)
    table = []
    for b in sorted({r["sigma_b2"] for r in rows}):
        for w in sorted({r["sigma_w2"] for r in rows}):
            own = [r for r in rows if r["sigma_w2"] == w and r["sigma_b2"] == b]
            xi = own[0]["xi_c"]
            table.append(
                {
                    "sigma_w^2": w,
                    "sigma_b^2": b,
                    "chi_1": fmt(own[0]["chi_1"]),
                    "xi_c": fmt(xi),
                    "6 xi_c": fmt(DEPTH_SCALE_MULTIPLE * xi),
                    "deepest trained": max((r["depth"] for r in own if r["trainable"]), default=0),
                    **{f"train acc @{r['depth']}": pct(r["train_accuracy"]) for r in own},
                }
            )
    share = agree / len(rows)
    # Misses of each kind: predicted trainable but did not train (within the step budget),
    # and trained beyond 6 xi_c.
    slow = [r for r in rows if r["predicted_trainable"] and not r["trainable"]]
    beyond = [r for r in rows if r["trainable"] and not r["predicted_trainable"]]
    verdict = (
        "supported" if share >= 0.8 else "partly supported" if share >= 0.6 else "not reproduced"
    )
    summary = (
        f"Claim: a tanh net with weight variance sigma_w^2 and bias variance sigma_b^2 trains "
        f"up to about {DEPTH_SCALE_MULTIPLE:g} xi_c layers, where xi_c = -1/ln(chi) is the "
        "mean-field depth scale, which diverges at the order-to-chaos transition (chi_1 = 1). "
        f"Over {len(rows)} (sigma_w^2, sigma_b^2, depth) cells, 'depth <= 6 xi_c' predicts "
        f"whether the net reached {pct(TRAINABLE_ACCURACY)} training accuracy in {agree} "
        f"({pct(share)}). Depth scales: "
        + "; ".join(
            f"sigma_w^2={t['sigma_w^2']}, sigma_b^2={t['sigma_b^2']}: xi_c={t['xi_c']}, "
            f"deepest trained {t['deepest trained']}"
            for t in table
        )
        + f". Misses: {len(slow)} nets within 6 xi_c that did not train in "
        f"{(QUICK if settings.quick else FULL).steps} steps"
        + (
            f" (depths {', '.join(str(d) for d in sorted({r['depth'] for r in slow}))}: near "
            "criticality the bound is far beyond what a short run reaches)"
            if slow
            else ""
        )
        + f", and {len(beyond)} that trained beyond it."
    )
    return Conclusion(
        verdict=verdict,
        summary=summary,
        table=table,
        figures=_figures(rows),
        published=[
            {
                "source": "Schoenholz et al. 2017, Fig. 5",
                "result": "MNIST/CIFAR-10 tanh nets train up to ~6 xi_c",
            }
        ],
        numbers={"agreement": share, "cells": len(rows)},
    )


def _figures(rows: list[Row]) -> list[tuple[str, Any]]:
    biases = sorted({r["sigma_b2"] for r in rows})
    fig, axes = new_figure(5.5 * len(biases), 4.2, cols=len(biases))
    axes = np.atleast_1d(axes)
    for ax, b in zip(axes, biases, strict=True):
        own = [r for r in rows if r["sigma_b2"] == b]
        sc = ax.scatter(
            [r["sigma_w2"] for r in own],
            [r["depth"] for r in own],
            c=[r["train_accuracy"] for r in own],
            cmap="viridis",
            vmin=0,
            vmax=1,
            s=120,
            marker="s",
        )
        grid = np.linspace(
            min(r["sigma_w2"] for r in own) * 0.9, max(r["sigma_w2"] for r in own) * 1.05, 120
        )
        six_xi = [DEPTH_SCALE_MULTIPLE * depth_scale(float(w), b) for w in grid]
        ax.plot(grid, six_xi, "w--", lw=2)
        ax.plot(grid, six_xi, "k:", lw=1, label="6 xi_c (mean field)")
        depths = [r["depth"] for r in own]
        ax.set(
            yscale="log",
            ylim=(min(depths) / 1.5, max(depths) * 1.5),
            xlabel="sigma_w^2",
            ylabel="depth",
            title=f"sigma_b^2 = {b}",
        )
        ax.legend(fontsize=7, loc="upper right")
        fig.colorbar(sc, ax=ax, label="training accuracy")
    return [
        ("Phase diagram: training accuracy over (sigma_w^2, depth); the dotted line is 6 xi_c", fig)
    ]


LAB = Lab(
    name="edge-of-chaos",
    title="Edge of chaos: trainable depth follows the mean-field depth scale",
    source="Schoenholz, Gilmer, Ganguli & Sohl-Dickstein, Deep Information Propagation (2017)",
    claim=(
        "Random tanh nets are trainable only up to a depth of about 6 xi_c, where xi_c is "
        "the mean-field depth scale of signal propagation; xi_c diverges at the "
        "order-to-chaos transition, so nets initialised at criticality train deepest."
    ),
    configs=configs,
    run_one=run_one,
    conclude=conclude,
    full_note=(
        f"Full: sigma_w^2 in {FULL.sigma_w2}, sigma_b^2 in {FULL.sigma_b2}, depths "
        f"{FULL.depths}, width {FULL.width}, {FULL.steps} SGD steps on digits "
        "(the paper: widths of hundreds, depths up to 300, MNIST and CIFAR-10)."
    ),
)

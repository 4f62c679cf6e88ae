"""The compression targets of issue 18, measured with plain PyTorch on dd.compress's models.

A 2 x 256 ReLU MLP is trained on digits; ``dd.compress`` prunes, quantises and distils it.
This script then measures the returned models itself -- nonzero entries of the weight
matrices in the state_dict, bytes of ``torch.save(state_dict)``, parameter counts, and
validation accuracy by a plain forward and argmax -- without deepdoctor's own metric code,
and prints each target beside what was measured:

- prune: the fewest nonzero weights, as a fraction of the dense net's, among the models
  within 1 point of the dense accuracy (target <= 10%);
- quantize: the fewest saved bytes, as a fraction, within 1 point (target <= 35%);
- distill: a student with <= 10% of the parameters within 2 points (soft targets).

    .venv/bin/python benchmarks/compress_targets.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import io

import torch
from torch import nn

import deepdoctor as dd

STEPS = 600
FINETUNE = 150
PRUNE = (0.5, 0.75, 0.9, 0.95, 0.97)


def experiment(seed: int) -> dd.Experiment:
    split = dd.data.load("digits")
    return dd.Experiment(
        lambda: dd.models.mlp(64, 10, depth=2, width=256, activation="relu", init="he"),
        split.train,
        split.val,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        steps=STEPS,
        seed=seed,
    )


def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(X).argmax(1) == y).float().mean())


def nonzero_weights(model: nn.Module) -> int:
    return sum(
        int(torch.count_nonzero(t))
        for k, t in model.state_dict().items()
        if k.endswith("weight") and t.dim() == 2
    )


def saved_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run(seed: int) -> dict[str, float]:
    exp = experiment(seed)
    X, y = exp.val
    result = dd.compress(
        exp,
        methods=("prune", "quantize", "distill"),
        strengths={"prune": PRUNE, "distill": (0.9,)},
        finetune_steps=FINETUNE,
        timing=0.1,
    )
    dense = result.baseline.model
    dense_acc = accuracy(dense, X, y)
    dense_w, dense_b, dense_p = nonzero_weights(dense), saved_bytes(dense), n_params(dense)
    print(f"seed {seed}: dense accuracy {dense_acc:.4f}, {dense_w:,} weights, {dense_b:,} bytes")
    out = {"dense_accuracy": dense_acc}
    prune_ok = [
        nonzero_weights(p.model) / dense_w
        for p in result.method("prune")
        if accuracy(p.model, X, y) >= dense_acc - 0.01
    ]
    out["prune_weight_fraction"] = min(prune_ok, default=1.0)
    for p in result.method("prune"):
        print(
            f"  prune {p.setting:26s} nonzero {nonzero_weights(p.model) / dense_w:6.1%}  "
            f"accuracy {accuracy(p.model, X, y):.4f}"
        )
    quant_ok = []
    for p in result.method("quantize"):
        acc, share = accuracy(p.model, X, y), saved_bytes(p.model) / dense_b
        print(f"  quantize {p.setting:40s} bytes {share:6.1%}  accuracy {acc:.4f}  {p.note}")
        if acc >= dense_acc - 0.01:
            quant_ok.append(share)
    out["quantize_byte_fraction"] = min(quant_ok, default=1.0)
    soft, plain = result.method("distill")
    soft_acc, plain_acc = accuracy(soft.model, X, y), accuracy(plain.model, X, y)
    out["student_param_fraction"] = n_params(soft.model) / dense_p
    out["student_points_lost"] = 100 * (dense_acc - soft_acc)
    out["labels_only_points_lost"] = 100 * (dense_acc - plain_acc)
    print(
        f"  distill: student {n_params(soft.model):,} parameters "
        f"({out['student_param_fraction']:.1%}), soft targets {soft_acc:.4f}, "
        f"labels only {plain_acc:.4f}"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [run(seed) for seed in args.seeds]
    print("\ntarget                                         measured (per seed)       met")
    checks = [
        ("prune: nonzero weights within 1 point <= 10%", "prune_weight_fraction", 0.10, "%"),
        ("quantize: saved bytes within 1 point <= 35%", "quantize_byte_fraction", 0.35, "%"),
        ("distill: student params <= 10%", "student_param_fraction", 0.10, "%"),
        ("distill: student within 2 points", "student_points_lost", 2.0, "pt"),
    ]
    for label, key, limit, unit in checks:
        values = [r[key] for r in rows]
        text = ", ".join(f"{v:.1%}" if unit == "%" else f"{v:.2f}" for v in values)
        print(f"{label:46s} {text:25s} {'yes' if all(v <= limit for v in values) else 'NO'}")
    lost = ", ".join(f"{r['labels_only_points_lost']:.2f}" for r in rows)
    print(f"{'(reference) labels-only student, points lost':46s} {lost}")


if __name__ == "__main__":
    main()

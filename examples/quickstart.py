"""Checkup, diagnose and treat your own model: the README's Python example, runnable.

.venv/bin/python examples/quickstart.py
"""

import torch

import deepdoctor as dd

split = dd.data.load("digits")  # .train and .val are (X, y) tensor pairs
exp = dd.Experiment(
    model=lambda: dd.models.mlp(64, 10, depth=30, width=64, activation="sigmoid"),
    train=split.train,
    val=split.val,
    optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
    steps=300,
    n_classes=10,
)

# 1. Before any training: one forward and backward pass on a batch.
X, y = split.train
chk = dd.checkup(exp.build(), (X[:64], y[:64]))
print("checkup:", [f.kind for f in chk.problems], "|", chk.depth_summary())

# 2. A watched training run (a fresh model from the builder), then the detectors.
diag = dd.diagnose_experiment(exp)
for f in diag.problems:
    print(f"diagnose: {f.severity} {f.kind}: {f.summary} -> try {', '.join(f.remedies[:3])}")

# 3. The remedies on fresh copies, from the same seed and data order; only verified ones kept.
tr = dd.treat(exp, budget=3)
print("treat:", tr.message)
print(f"validation accuracy {tr.before['val_accuracy']:.3f} -> {tr.after['val_accuracy']:.3f}")
print(tr.snippet())
tr.save("deepdoctor-out/quickstart")  # report.html and treatment.json

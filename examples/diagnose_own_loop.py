"""Your own model and plain PyTorch loop, diagnosed: wrap the loop in a Probe, then detect."""

import torch
from torch import nn

import deepdoctor as dd

X, y = dd.data.load("digits").train
hidden = [m for _ in range(7) for m in (nn.Linear(32, 32), nn.Sigmoid())]
model = nn.Sequential(nn.Linear(64, 32), nn.Sigmoid(), *hidden, nn.Linear(32, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.1)  # a deep sigmoid stack: trains badly
with dd.Probe(model) as probe:
    for _ in range(200):
        idx = torch.randint(0, len(X), (64,))
        loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        probe.record_loss(loss, targets=y[idx])  # the loss, and the task and classes
for finding in dd.detect(probe.trace):
    print(f"{finding.severity:8s} {finding.kind}: {finding.summary}")

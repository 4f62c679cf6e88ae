"""The Probe on a DistributedDataParallel model: torchrun --nproc_per_node 2 ddp_probe.py
(gloo on CPU). Layers keep the model's own names; every rank records the same values (DDP
averages the gradients, the Probe the loss); the trace is written by rank 0 only."""

import sys

import torch
import torch.distributed as dist
from torch import nn

import deepdoctor as dd

torch.set_num_threads(1)
dist.init_process_group("gloo")
rank = dist.get_rank()
X, y = dd.data.load("digits").train
torch.manual_seed(0)  # the same initial weights on every rank
model = nn.parallel.DistributedDataParallel(
    nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
g = torch.Generator().manual_seed(rank)  # each rank its own batches
with dd.Probe(model) as probe:
    for _ in range(20):
        idx = torch.randint(0, len(X), (32,), generator=g)
        loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        probe.record_loss(loss)  # on every rank: the mean over ranks is recorded
out = sys.argv[1] if len(sys.argv) > 1 else "deepdoctor-out/ddp-trace"
probe.save(out)  # rank 0 writes; the others return None
last = probe.trace.grad_norms()[-1].tolist()
line = f"rank {rank}: layers {probe.trace.layers} loss {probe.trace.loss()[-1]!r} grads {last!r}"
print(line, flush=True)
dist.destroy_process_group()

"""Run by tests/test_distributed.py under torchrun (gloo, 2 CPU processes): the Probe on a
model sharded by FSDP2's fully_shard records global norms, checked here against the full
(all-gathered) tensors, and the same values on both ranks."""

import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

import deepdoctor as dd

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))  # 3 rows: shards 2 and 1
for layer in (model[0], model[2]):
    fully_shard(layer)
fully_shard(model)
opt = torch.optim.SGD(model.parameters(), lr=0.5)
torch.manual_seed(1 + rank)  # each rank its own batches
seen = []
with dd.Probe(model, optimizer=opt, every=2) as probe:
    for _ in range(4):
        X, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
        loss = nn.functional.cross_entropy(model(X), y)
        opt.zero_grad()
        loss.backward()
        whole = {
            n: (p.detach().full_tensor(), p.grad.full_tensor()) for n, p in model.named_parameters()
        }
        opt.step()
        probe.record_loss(loss)
        seen.append((whole, {n: p.detach().full_tensor() for n, p in model.named_parameters()}))
trace = probe.trace
for step, (whole, after) in enumerate(seen):
    for i, layer in enumerate(["0", "2"]):
        (w, gw), (b, gb) = whole[f"{layer}.weight"], whole[f"{layer}.bias"]
        size = float((w.norm() ** 2 + b.norm() ** 2).sqrt())
        want = [float(gw.norm()), float(gb.norm()), size]
        got = [trace.layer.array(s)[step, i] for s in ("grad_norm_weight", "grad_norm_bias")]
        got.append(trace.layer.array("weight_norm")[step, i])
        assert all(abs(g - r) <= 1e-5 * r for g, r in zip(got, want, strict=True)), (got, want)
        if step % 2 == 0:
            dw, db = after[f"{layer}.weight"] - w, after[f"{layer}.bias"] - b
            moved = float((dw.norm() ** 2 + db.norm() ** 2).sqrt())
            ratio = trace.updates.array("update_ratio")[step // 2, i]
            assert abs(ratio - moved / size) <= 1e-5 * ratio, (ratio, moved / size)
types = [trace.layer_types[n] for n in trace.layers]
print(
    f"rank {rank}: layers {trace.layers} types {types} loss {trace.loss().tolist()} "
    f"grads {trace.grad_norms()[-1].tolist()}",
    flush=True,
)
probe.save(sys.argv[1])
dist.destroy_process_group()

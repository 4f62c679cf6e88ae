"""Run by tests/test_distributed.py under torchrun (gloo, 2 CPU processes): on a model
sharded by FSDP2's fully_shard, the pretrained layers' drift and the checkup's norms are
global, checked here against the full (all-gathered) tensors, and ``.grad`` is left as it
was; each rank prints what it recorded, for the test to compare."""

import math

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

import deepdoctor as dd
from deepdoctor.pretrained import DRIFT_STEPS

dist.init_process_group("gloo")
rank = dist.get_rank()


def sharded() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))  # 3 rows: 2 and 1
    for layer in (model[0], model[2]):
        fully_shard(layer)
    fully_shard(model)
    return model


def full(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().full_tensor() for n, p in model.named_parameters()}


def close(got: float, want: float) -> None:
    assert abs(got - want) <= 1e-5 * abs(want), (got, want)


def norm(*tensors: torch.Tensor) -> float:
    return math.sqrt(sum(float(t.double().norm()) ** 2 for t in tensors))


# The drift of the pretrained layer "0" over the first DRIFT_STEPS steps, each rank its batches
model = sharded()
opt = torch.optim.SGD(model.parameters(), lr=0.5)
start = full(model)
torch.manual_seed(1 + rank)
with dd.Probe(model, optimizer=opt, pretrained=["0"]) as probe:
    for _ in range(DRIFT_STEPS):
        X, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
        loss = nn.functional.cross_entropy(model(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        probe.record_loss(loss)
end = full(model)
drift = probe.trace.facts.pretrained_drift
assert drift is not None and list(drift) == ["0"], drift
moved = norm(end["0.weight"] - start["0.weight"], end["0.bias"] - start["0.bias"])
close(drift["0"], moved / norm(start["0.weight"], start["0.bias"]))

# The checkup of a sharded model, each rank its own batch
model = sharded()
torch.manual_seed(1 + rank)
X, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
chk = dd.checkup(model, (X, y))
assert all(p.grad is None for p in model.parameters())
loss = nn.functional.cross_entropy(model(X), y)
loss.backward()  # what FSDP reduces over the ranks: the gradient of the mean loss
whole = {n: (p.detach().full_tensor(), p.grad.full_tensor()) for n, p in model.named_parameters()}
for i, layer in enumerate(["0", "2"]):
    (w, gw), (b, gb) = whole[f"{layer}.weight"], whole[f"{layer}.bias"]
    close(chk.layers[i].grad_norm, norm(gw))
    close(chk.trace.layer.array("grad_norm_bias")[0, i], norm(gb))
    close(chk.trace.layer.array("weight_norm")[0, i], norm(w, b))
    close(chk.layers[i].grad_to_weight, norm(gw) / norm(w, b))
grads = [row.grad_norm for row in chk.layers]
print(f"rank {rank}: drift {drift['0']!r} checkup grads {grads!r} end", flush=True)
dist.destroy_process_group()

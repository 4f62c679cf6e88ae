"""The Probe under DistributedDataParallel: examples/ddp_probe.py under torchrun (gloo, 2
CPU processes) gives the model's own layer names and the same values on both ranks, and
rank 0 alone writes the trace; a DDP model without a process group gets one sentence. Under
FSDP2 (fully_shard, which runs on CPU with gloo in torch 2.13) the norms are global:
tests/fsdp_probe.py checks the Probe's, tests/fsdp_checkup.py the pretrained drift's and the
checkup's, against the all-gathered tensors on every rank."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
from torch import nn

from deepdoctor.probe import Probe
from deepdoctor.trace import Trace

EXAMPLE = Path(__file__).parent.parent / "examples" / "ddp_probe.py"
FSDP = Path(__file__).parent / "fsdp_probe.py"
FSDP_CHECKUP = Path(__file__).parent / "fsdp_checkup.py"


def torchrun(script: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(tmp_path / "trace")],
        capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path,
    )  # fmt: skip


def test_ddp_under_torchrun(tmp_path: Path) -> None:
    run = torchrun(EXAMPLE, tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    # each rank prints one line; torchrun may put another process's output on the same line
    lines = sorted(re.findall(r"rank \d: layers .*? grads \[[^\]]*\]", run.stdout))
    assert [ln.split(":")[0] for ln in lines] == ["rank 0", "rank 1"], run.stdout
    # the same layers, loss and gradient norms on both ranks, to the last digit
    assert lines[0].split(":", 1)[1] == lines[1].split(":", 1)[1]
    assert "layers ['0', '2']" in lines[0]  # no DDP "module." prefix
    written = list(tmp_path.glob("trace*"))
    assert len(written) == 1  # rank 0 only
    trace = Trace.load(written[0])
    assert trace.n_steps == 20 and trace.layers == ["0", "2"]
    grads = ast.literal_eval(lines[0].split("grads ", 1)[1])
    assert list(trace.grad_norms()[-1]) == pytest.approx(grads, rel=1e-12)


def test_fsdp_norms_are_global_and_the_same_on_every_rank(tmp_path: Path) -> None:
    run = torchrun(FSDP, tmp_path)  # asserts the norms against the full tensors itself
    assert run.returncode == 0, run.stderr[-2000:]
    lines = sorted(re.findall(r"rank \d: layers .*? grads \[[^\]]*\]", run.stdout))
    assert [ln.split(":")[0] for ln in lines] == ["rank 0", "rank 1"], run.stdout
    assert lines[0].split(":", 1)[1] == lines[1].split(":", 1)[1]
    assert "layers ['0', '2'] types ['Linear', 'Linear']" in lines[0]  # not FSDPLinear
    assert len(list(tmp_path.glob("trace*"))) == 1  # rank 0 only


def test_fsdp_drift_and_checkup_are_global_and_the_same_on_every_rank(tmp_path: Path) -> None:
    run = torchrun(FSDP_CHECKUP, tmp_path)  # asserts the values against the full tensors
    assert run.returncode == 0, run.stderr[-2000:]
    lines = sorted(re.findall(r"rank \d: drift .*? end", run.stdout))
    assert [ln.split(":")[0] for ln in lines] == ["rank 0", "rank 1"], run.stdout
    assert lines[0].split(":", 1)[1] == lines[1].split(":", 1)[1]  # to the last digit


def test_ddp_without_a_process_group(tmp_path: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = nn.parallel.DistributedDataParallel(nn.Linear(3, 2))
        probe = Probe(model)  # inside the group: the model's own names, one process
        assert probe.world_size == 1 and probe.trace.layers == ["(model)"]
    finally:
        dist.destroy_process_group()
    with pytest.raises(ValueError, match="process group is not initialised.*init_process_group"):
        Probe(model)

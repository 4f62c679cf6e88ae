"""The growth (Net2Net) and compression labs: function-preserving steps, FLOPs, the claims."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deepdoctor import models
from deepdoctor.lab import run_lab
from deepdoctor.lab.growth import net2deeper, net2wider


def test_net2wider_and_net2deeper_keep_the_function_and_change_the_shape() -> None:
    torch.manual_seed(0)
    net = models.mlp(12, 5, depth=2, width=7)
    x = torch.randn(50, 12)
    wide = net2wider(net, 1, 20, seed=3)
    deep = net2deeper(wide)
    assert [m.out_features for m in deep if isinstance(m, torch.nn.Linear)] == [7, 20, 20, 5]
    with torch.no_grad():
        torch.testing.assert_close(wide(x), net(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(deep(x), net(x), atol=1e-5, rtol=1e-5)
    # the copies of a unit get different shares of its outgoing weights: not stuck together
    out_w = wide[-1].weight if isinstance(wide[-1], torch.nn.Linear) else None
    assert out_w is not None and len(torch.unique(out_w[0].round(decimals=6))) > 7


def test_growth_lab_counts_flops_per_phase_and_grows_without_losing_the_function(
    tmp_path: Path,
) -> None:
    run = run_lab("growth", quick=True, out=tmp_path, progress=False)
    n = run.conclusion.numbers
    # connections: 1x32 = 64*32 + 32*10, 1x128 = 64*128 + 128*10, 2x128 adds 128*128; each
    # grown phase is a third of the steps, scratch trains 2x128 for all of them
    small, wide, final = 64 * 32 + 320, 64 * 128 + 1280, 64 * 128 + 128 * 128 + 1280
    assert n["flop_ratio"] == pytest.approx((small + wide + final) / (3 * final), rel=1e-9)
    assert n["max_change"] < 1e-4
    # seed 0: grown 96.7%, scratch 97.5%
    assert n["grown_accuracy"] > 0.9 and n["points_lost"] < 3


def test_compression_lab_measures_the_three_claims(tmp_path: Path) -> None:
    run = run_lab("compression", quick=True, out=tmp_path, progress=False)
    n = run.conclusion.numbers
    assert n["prune"]["kept"] == pytest.approx(0.1)
    assert n["distill"]["kept"] <= 0.1
    # seed 0, quick (150 steps, 40-step fine-tunes): prune 90% -2.2 points, student -0.6
    assert n["prune"]["points_lost"] < 5 and n["distill"]["points_lost"] < 3
    assert {r["source"].split(",")[0] for r in run.conclusion.published} == {
        "Han et al. 2015",
        "Xue",
        "Hinton",
    }
    assert (tmp_path / "report.html").read_text().count("Han et al. 2015") >= 1

"""dd.complexity: parameters, connections, reuse, FLOPs and memory against hand counts."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import deepdoctor as dd
from deepdoctor import models
from deepdoctor.complexity import PARAMS_PER_SAMPLE_MAX, Complexity, LayerComplexity, measure


def by_name(c: Complexity) -> dict[str, LayerComplexity]:
    return {layer.name: layer for layer in c.layers}


def test_linear_counts_match_hand_computed_values() -> None:
    m, n = 7, 5
    c = dd.complexity(nn.Linear(m, n), torch.zeros(3, m))
    (layer,) = c.layers
    assert layer.params == m * n + n == c.params
    assert layer.connections == m * n == c.connections
    assert layer.reuse == 1
    assert layer.flops == 2 * m * n == c.flops  # a multiply-add is two FLOPs, per example


def test_mlp_per_layer_counts_follow_forward_order() -> None:
    model = models.mlp(64, 10, depth=2, width=30)
    c = dd.complexity(model, torch.zeros(2, 64))
    assert [layer.name for layer in c.layers] == ["fc1", "fc2", "out"]
    assert [layer.params for layer in c.layers] == [64 * 30 + 30, 30 * 30 + 30, 30 * 10 + 10]
    assert c.params == 3190 == models.n_parameters(model)
    assert c.connections == 64 * 30 + 30 * 30 + 30 * 10
    assert c.flops == 2 * (64 * 30 + 30 * 30 + 30 * 10)
    # leaf outputs per example: fc1, act1, fc2, act2 (30 floats each) and out (10), 4 bytes
    assert c.activation_bytes == (4 * 30 + 10) * 4


def test_convolution_shares_weights_over_output_positions() -> None:
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    c = dd.complexity(conv, torch.zeros(2, 3, 10, 12))
    (layer,) = c.layers
    assert layer.params == 8 * 3 * 3 * 3 + 8
    assert layer.connections == 8 * 3 * 3 * 3  # each shared weight counted once ...
    assert layer.reuse == 10 * 12  # ... and applied at every output position
    assert layer.flops == 2 * (8 * 3 * 3 * 3) * 10 * 12
    strided = dd.complexity(nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.zeros(1, 3, 10, 12))
    assert strided.layers[0].reuse == 5 * 6


def test_tied_weights_are_counted_once_and_reused_twice() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.fc(x)))

    c = dd.complexity(Twice(), torch.zeros(2, 6))
    (layer,) = c.layers
    assert c.params == 6 * 6 + 6
    assert layer.reuse == 2
    assert c.flops == 2 * 2 * 6 * 6


def test_sequence_layers_are_reused_at_every_position() -> None:
    seq = nn.Sequential(nn.Linear(4, 3))
    c = dd.complexity(seq, torch.zeros(2, 11, 4))
    assert c.layers[0].reuse == 11
    assert c.flops == 2 * 4 * 3 * 11


def test_lstm_flops_are_counted_on_cpu() -> None:
    # FlopCounterMode has no formula for the CPU LSTM kernel; ours: two matrix products per
    # step: 2 * T * (4H * in + 4H * H) for each layer.
    model = models.rnn(1, 3, cell="lstm", width=8, depth=2)
    T = 20
    c = dd.complexity(model, torch.zeros(2, T))
    rnn = by_name(c)["rnn"]
    assert rnn.reuse == T
    assert rnn.flops == 2 * T * ((32 * 1 + 32 * 8) + (32 * 8 + 32 * 8))
    assert rnn.connections == 32 * 1 + 32 * 8 + 32 * 8 + 32 * 8


def test_attention_counts_projections_and_scores() -> None:
    width, T = 16, 12
    model = models.transformer(T, 3, depth=1, width=width, heads=2)
    c = dd.complexity(model, torch.zeros(2, T))
    attn = by_name(c)["blocks.0.attn"]
    projections = 2 * T * width * (3 * width) + 2 * T * width * width
    scores = 2 * 2 * T * T * width  # QK^T and AV, summed over heads
    assert attn.flops == projections + scores
    assert by_name(c)["blocks.0.attn.out_proj"].reuse is None  # applied functionally


def test_params_per_sample_and_overfitting_info() -> None:
    model = models.mlp(64, 10, depth=2, width=30)  # 3190 parameters
    few = dd.complexity(model, torch.zeros(2, 64), n_samples=20)
    assert few.params_per_sample == pytest.approx(3190 / 20)
    (finding,) = few.findings
    assert (finding.kind, finding.severity) == ("overfitting", "info")
    assert finding.evidence["threshold"] == PARAMS_PER_SAMPLE_MAX
    many = dd.complexity(model, torch.zeros(2, 64), n_samples=1000)
    assert many.findings == [] and many.params_per_sample == pytest.approx(3.19)
    assert dd.complexity(model, torch.zeros(2, 64)).params_per_sample is None


def test_to_dict_layout_is_json_ready() -> None:
    c = dd.complexity(models.mlp(8, 2, depth=1, width=4), torch.zeros(2, 8), n_samples=10)
    d = json.loads(json.dumps(c.to_dict(), allow_nan=False))
    assert set(d) == {"layers", "total", "params_per_sample"}
    assert set(d["total"]) == {"params", "connections", "flops", "activation_bytes"}
    assert set(d["layers"][0]) == {"name", "type", "params", "connections", "reuse", "flops"}


def test_measure_leaves_model_and_rng_untouched() -> None:
    model = models.mlp(8, 3, depth=2, width=6, norm="batch", dropout=0.5)
    model.eval()
    model.norm1.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    x = torch.randn(1, 8)
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    dd.complexity(model, x)  # one example, batch norm included
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert random.getstate() == states[2]


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match=r"layer 'fc1' \(Linear\).*\(2, 5\).*expects 4"):
        dd.complexity(models.mlp(4, 2, depth=1, width=3), torch.zeros(2, 5))
    with pytest.raises(TypeError, match=r"batch must be a tensor X or a tuple \(X, y\).*list of 1"):
        dd.complexity(nn.Linear(2, 2), [[0.0, 1.0]])
    with pytest.raises(TypeError, match=r"tuple of 3: \(Tensor, Tensor, Tensor\)"):
        dd.complexity(nn.Linear(2, 2), (torch.zeros(1, 2),) * 3)
    with pytest.raises(ValueError, match="at least one example"):
        dd.complexity(nn.Linear(2, 2), torch.zeros(0, 2))
    with pytest.raises(ValueError, match="n_samples"):
        dd.complexity(nn.Linear(2, 2), torch.zeros(1, 2), n_samples=0)


def test_a_batch_x_y_is_measured_on_its_x() -> None:
    model = models.mlp(8, 3, depth=1, width=5)
    x, y = torch.zeros(4, 8), torch.zeros(4, dtype=torch.long)
    assert dd.complexity(model, (x, y)).to_dict() == dd.complexity(model, x).to_dict()
    assert dd.complexity(model, [x, y]).flops == 2 * (8 * 5 + 5 * 3)


def test_a_forward_with_several_arguments_takes_them_as_x() -> None:
    class Sum(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(4, 2)

        def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return self.a(u) + self.b(v)

    c = dd.complexity(Sum(), ((torch.zeros(2, 3), torch.zeros(2, 4)), torch.zeros(2)))
    assert [layer.connections for layer in c.layers] == [3 * 2, 4 * 2]


def test_dd_complexity_is_the_function_and_the_module_stays_importable() -> None:
    import deepdoctor.complexity  # a later import of the submodule must not rebind the name

    assert dd.complexity is measure
    assert deepdoctor.complexity is measure
    assert sys.modules["deepdoctor.complexity"].measure is measure
    assert dd.complexity(nn.Linear(3, 2), torch.zeros(1, 3)).params == 8


def test_importing_the_submodule_first_still_gives_the_function() -> None:
    code = (
        "import deepdoctor.complexity, torch\n"
        "import deepdoctor as dd\n"
        "from deepdoctor.complexity import Complexity\n"
        "c = dd.complexity(torch.nn.Linear(3, 2), torch.zeros(1, 3))\n"
        "assert isinstance(c, Complexity) and c.params == 8, c\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

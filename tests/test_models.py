"""deepdoctor.models: every builder x activation x init x norm runs; counts; init statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from deepdoctor import models

ACTIVATIONS = list(models.ACTIVATIONS)
INITS = [
    "default",
    "xavier",
    "xavier_normal",
    "xavier_uniform",
    "he",
    "he_normal",
    "he_uniform",
    "orthogonal",
    "lecun",
    "normal:0.1",
]
NORMS = list(models.NORMS)


def _forward_backward(model: nn.Module, x: torch.Tensor, n_out: int) -> None:
    """The model runs forward and backward, and every parameter receives a finite gradient."""
    out = model(x)
    assert out.shape == (len(x), n_out)
    assert bool(torch.isfinite(out).all())
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert bool(torch.isfinite(p.grad).all()), name


def test_the_axes_cover_every_documented_value() -> None:
    assert set(ACTIVATIONS) == {
        "sigmoid",
        "tanh",
        "relu",
        "leaky_relu",
        "prelu",
        "elu",
        "selu",
        "silu",
        "gelu",
    }
    assert set(models.INITS) | {"normal:0.1"} == set(INITS)
    assert NORMS == ["none", "batch", "layer"]


# -- every builder, every switch ----------------------------------------------------------


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_mlp_full_cross_product(activation: str, init: str, norm: str) -> None:
    torch.manual_seed(0)
    model = models.mlp(6, 3, depth=2, width=8, activation=activation, init=init, norm=norm)
    _forward_backward(model, torch.randn(5, 6), 3)


def test_mlp_residual_dropout_and_no_bias() -> None:
    torch.manual_seed(0)
    model = models.mlp(6, 3, depth=3, width=8, residual=True, dropout=0.2, bias=False)
    assert [n for n, _ in model.named_children()] == [
        "fc1",
        "act1",
        "drop1",
        "block2",
        "block3",
        "out",
    ]
    assert isinstance(model.block2, models.Residual)
    assert all("bias" not in n for n, _ in model.named_parameters())
    _forward_backward(model, torch.randn(5, 6), 3)


def test_mlp_layer_names_are_readable() -> None:
    model = models.mlp(4, 2, depth=2, width=5, norm="batch", dropout=0.1)
    assert [n for n, _ in model.named_children()] == [
        "fc1",
        "norm1",
        "act1",
        "drop1",
        "fc2",
        "norm2",
        "act2",
        "drop2",
        "out",
    ]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(2, 12), (2, 8, 8)], ids=["1d", "2d"])
def test_cnn_every_activation_in_1d_and_2d(shape: tuple[int, ...], activation: str) -> None:
    torch.manual_seed(0)
    model = models.cnn(shape, 4, depth=2, width=4, activation=activation)
    _forward_backward(model, torch.randn(3, *shape), 4)


@pytest.mark.parametrize("init", INITS)
def test_cnn_every_init(init: str) -> None:
    torch.manual_seed(0)
    model = models.cnn((2, 12), 4, depth=2, width=4, init=init)
    _forward_backward(model, torch.randn(3, 2, 12), 4)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape", [(2, 12), (2, 8, 8)], ids=["1d", "2d"])
def test_cnn_every_norm_and_residual(shape: tuple[int, ...], norm: str, residual: bool) -> None:
    torch.manual_seed(0)
    model = models.cnn(
        shape, 4, depth=3, width=4, norm=norm, residual=residual, dropout=0.1, downsample_every=3
    )
    assert any(isinstance(m, models.Residual) for m in model.modules()) == residual
    _forward_backward(model, torch.randn(3, *shape), 4)


@pytest.mark.parametrize("pre_ln", [True, False], ids=["pre_ln", "post_ln"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_transformer_every_activation_on_tokens_and_features(activation: str, pre_ln: bool) -> None:
    torch.manual_seed(0)
    tokens = models.transformer(
        6, 3, depth=1, width=8, heads=2, activation=activation, pre_ln=pre_ln, vocab_size=11
    )
    _forward_backward(tokens, torch.randint(0, 11, (4, 6)), 3)
    features = models.transformer(
        6, 3, depth=1, width=8, heads=2, activation=activation, pre_ln=pre_ln, in_features=3
    )
    _forward_backward(features, torch.randn(4, 6, 3), 3)


@pytest.mark.parametrize("init", INITS)
def test_transformer_every_init_on_a_flat_signal(init: str) -> None:
    torch.manual_seed(0)
    model = models.transformer(6, 3, depth=2, width=8, heads=2, init=init, dropout=0.1)
    _forward_backward(model, torch.randn(4, 6), 3)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("cell", models.RNN_CELLS)
def test_rnn_every_cell_with_every_activation(cell: str, activation: str) -> None:
    torch.manual_seed(0)
    model = models.rnn(3, 4, cell=cell, width=6, activation=activation)
    _forward_backward(model, torch.randn(2, 5, 3), 4)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("cell", models.RNN_CELLS)
def test_rnn_every_cell_with_every_init(cell: str, init: str) -> None:
    torch.manual_seed(0)
    model = models.rnn(1, 4, cell=cell, depth=2, width=6, init=init, dropout=0.1)
    _forward_backward(model, torch.randn(2, 5), 4)  # (N, T) read as one feature per step


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("cell", models.RNN_CELLS)
def test_rnn_every_cell_with_every_norm(cell: str, norm: str) -> None:
    torch.manual_seed(0)
    model = models.rnn(3, 4, cell=cell, width=6, norm=norm)
    _forward_backward(model, torch.randn(3, 5, 3), 4)


def test_vanilla_rnn_uses_relu_or_tanh_as_asked() -> None:
    assert models.rnn(2, 2, cell="rnn", activation="relu").rnn.nonlinearity == "relu"
    assert models.rnn(2, 2, cell="rnn", activation="sigmoid").rnn.nonlinearity == "tanh"


def test_swish_is_silu() -> None:
    model = models.mlp(4, 2, depth=1, width=3, activation="swish")
    assert isinstance(model.act1, nn.SiLU)


# -- parameter counts by hand: Linear(m, n) has m*n + n ------------------------------------


def test_mlp_parameter_count() -> None:
    # (64*30 + 30) + (30*30 + 30) + (30*10 + 10)
    assert models.n_parameters(models.mlp(64, 10, depth=2, width=30)) == 3190
    assert models.n_parameters(models.mlp(64, 10, depth=2, width=30, bias=False)) == 3120
    # batch norm adds a scale and a shift per unit: 2 * 30 per hidden layer
    assert models.n_parameters(models.mlp(64, 10, depth=2, width=30, norm="batch")) == 3310


def test_cnn_parameter_count() -> None:
    # Conv1d(1, 4, 3): 1*4*3 + 4 = 16; same padding keeps length 40; Linear(4*40, 10) = 1610
    assert models.n_parameters(models.cnn((1, 40), 10, depth=1, width=4)) == 16 + 1610
    # Conv2d(3, 6, 3) = 3*6*9 + 6 = 168; Conv2d(6, 6, 3, stride 2) = 330, 8x8 -> 4x4;
    # Linear(6*4*4, 5) = 485
    assert models.n_parameters(models.cnn((3, 8, 8), 5, depth=2, width=6)) == 168 + 330 + 485


@pytest.mark.parametrize("cell,gates", [("rnn", 1), ("gru", 3), ("lstm", 4)])
def test_rnn_parameter_count(cell: str, gates: int) -> None:
    i, h, classes = 3, 8, 4
    core = gates * (h * (i + h) + 2 * h)  # W_ih, W_hh and two biases per gate
    head = (h * h + h) + (h * classes + classes)
    assert models.n_parameters(models.rnn(i, classes, cell=cell, width=h)) == core + head


@pytest.mark.parametrize("pre_ln,final_norm", [(True, 16), (False, 0)])
def test_transformer_parameter_count(pre_ln: bool, final_norm: int) -> None:
    w, seq, classes = 8, 10, 3
    embed = (1 * w + w) + seq * w  # Linear(1, w) and the learned positions
    attn = (3 * w * w + 3 * w) + (w * w + w)  # q/k/v projection and out_proj
    norms = 2 * (2 * w)
    ffn = (w * 2 * w + 2 * w) + (2 * w * w + w)
    head = w * classes + classes
    expected = embed + attn + norms + ffn + final_norm + head
    model = models.transformer(seq, classes, depth=1, width=w, heads=2, pre_ln=pre_ln)
    assert models.n_parameters(model) == expected


def test_n_parameters_skips_frozen_ones_unless_asked() -> None:
    model = models.mlp(64, 10, depth=2, width=30)
    model.fc1.requires_grad_(False)
    assert models.n_parameters(model) == 3190 - (64 * 30 + 30)
    assert models.n_parameters(model, trainable_only=False) == 3190


# -- initialisation statistics ------------------------------------------------------------

FAN_IN, FAN_OUT = 400, 300


@pytest.mark.parametrize(
    "init,expected_std",
    [
        ("he", math.sqrt(2 / FAN_IN)),
        ("he_uniform", math.sqrt(2 / FAN_IN)),  # U(-b, b), b = sqrt(6 / fan_in)
        ("xavier", math.sqrt(2 / (FAN_IN + FAN_OUT))),
        ("xavier_uniform", math.sqrt(2 / (FAN_IN + FAN_OUT))),
        ("lecun", math.sqrt(1 / FAN_IN)),
        ("normal:0.1", 0.1),
    ],
)
def test_init_gives_the_textbook_weight_std(init: str, expected_std: float) -> None:
    torch.manual_seed(0)
    model = models.mlp(FAN_IN, 10, depth=1, width=FAN_OUT, init=init)
    w = model.fc1.weight.detach()
    assert float(w.mean()) == pytest.approx(0.0, abs=0.05 * expected_std)
    assert float(w.std()) == pytest.approx(expected_std, rel=0.02)  # 120,000 samples
    assert float(model.fc1.bias.detach().abs().max()) == 0.0


def test_orthogonal_init_has_orthogonal_rows_scaled_by_the_gain() -> None:
    model = models.mlp(FAN_IN, 10, depth=1, width=FAN_OUT, activation="tanh", init="orthogonal")
    w = model.fc1.weight.detach().double()
    gain = 5 / 3
    assert torch.allclose(w @ w.T, gain**2 * torch.eye(FAN_OUT, dtype=torch.float64), atol=1e-4)


def test_default_init_keeps_torch_biases() -> None:
    torch.manual_seed(0)
    model = models.mlp(FAN_IN, 10, depth=1, width=FAN_OUT)
    bound = 1 / math.sqrt(FAN_IN)  # torch's Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert 0.9 * bound < float(model.fc1.bias.detach().abs().max()) <= bound


def test_init_reaches_conv_recurrent_and_attention_weights() -> None:
    torch.manual_seed(0)
    conv = models.cnn((4, 16, 16), 3, depth=1, width=64, init="normal:0.1")
    assert float(conv.fc1.weight.detach().std()) == pytest.approx(0.1, rel=0.05)
    lstm = models.rnn(32, 3, cell="lstm", width=64, init="normal:0.1")
    for name in ("weight_ih_l0", "weight_hh_l0"):
        assert float(getattr(lstm.rnn, name).detach().std()) == pytest.approx(0.1, rel=0.05)
    assert float(lstm.rnn.bias_hh_l0.detach().abs().max()) == 0.0
    tf = models.transformer(4, 3, depth=1, width=64, heads=4, init="normal:0.1")
    attn = tf.blocks[0].attn
    assert float(attn.in_proj_weight.detach().std()) == pytest.approx(0.1, rel=0.05)
    assert float(attn.out_proj.weight.detach().std()) == pytest.approx(0.1, rel=0.05)
    assert float(attn.in_proj_bias.detach().abs().max()) == 0.0


def test_init_weights_on_a_users_own_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(500, 200), nn.ReLU(), nn.Linear(200, 2))
    assert models.init_weights(model, "he") is model
    assert float(model[0].weight.detach().std()) == pytest.approx(math.sqrt(2 / 500), rel=0.03)


# -- bad arguments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (
            {"activation": "relux"},
            ValueError,
            "activation must be one of sigmoid, tanh, relu, .*gelu; got 'relux'",
        ),
        ({"activation": ["relu"]}, ValueError, r"activation must be one of .*; got \['relu'\]"),
        (
            {"init": "kaiming"},
            ValueError,
            "init must be one of default, xavier, .*normal:SIGMA; got 'kaiming'",
        ),
        ({"init": 5}, ValueError, "init must be one of .*; got 5"),
        ({"init": "normal:abc"}, ValueError, "write normal:SIGMA with a positive SIGMA"),
        ({"init": "normal:-1"}, ValueError, "write normal:SIGMA with a positive SIGMA"),
        ({"norm": "group"}, ValueError, "norm must be one of none, batch, layer; got 'group'"),
        ({"width": "30"}, TypeError, r"width must be a whole number, got '30' \(str\)"),
        ({"depth": 2.5}, TypeError, "depth must be a whole number, got 2.5"),
        ({"depth": -1}, ValueError, "depth must be at least 0, got -1"),
        ({"dropout": "0.1"}, TypeError, "dropout must be a number, got '0.1'"),
        ({"dropout": 1.0}, ValueError, r"dropout must be a fraction in \[0, 1\), got 1.0"),
    ],
)
def test_bad_mlp_arguments_name_the_value_and_the_allowed_ones(
    kwargs: dict, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        models.mlp(4, 2, **kwargs)


def test_bad_cnn_transformer_rnn_arguments() -> None:
    with pytest.raises(ValueError, match=r"input_shape must be \(channels, length\)"):
        models.cnn(40, 10)
    with pytest.raises(TypeError, match="input_shape must be a whole number, got 3.5"):
        models.cnn((1, 3.5), 10)
    with pytest.raises(TypeError, match="input_shape must be a whole number, got 'x'"):
        models.cnn((1, "x"), 10)
    with pytest.raises(ValueError, match=r"width \(10\) must be divisible by heads \(4\)"):
        models.transformer(5, 2, width=10, heads=4)
    with pytest.raises(ValueError, match="cell must be one of rnn, lstm, gru; got 'transformer'"):
        models.rnn(3, 2, cell="transformer")
    with pytest.raises(TypeError, match="n_classes must be a whole number, got '10'"):
        models.rnn(3, "10")
    with pytest.raises(ValueError, match="builder must be one of mlp, cnn, transformer, rnn"):
        models.spec("resnet")


def test_builder_spec_rebuilds_with_changes() -> None:
    spec = models.spec("mlp", in_features=6, n_classes=3, depth=2, width=8)
    wider = spec.replace(width=16)
    assert models.n_parameters(spec()) == (6 * 8 + 8) + (8 * 8 + 8) + (8 * 3 + 3)
    assert wider().fc1.out_features == 16 and spec.kwargs["width"] == 8
    assert repr(spec) == "deepdoctor.models.mlp(in_features=6, n_classes=3, depth=2, width=8)"


def test_numpy_integers_count_as_whole_numbers_and_booleans_do_not() -> None:
    model = models.mlp(np.int64(6), np.int32(3), depth=np.int64(1), width=4)
    assert model.fc1.in_features == 6 and type(model.fc1.in_features) is int
    with pytest.raises(TypeError, match=r"depth must be a whole number, got True \(bool\)"):
        models.mlp(4, 2, depth=True)

"""Configurable model builders: mlp, cnn, transformer, rnn.

Each builder takes the switches that decide whether a deep network trains (activation,
initialisation, normalisation, residual connections, dropout) and checks every argument,
naming the bad value and the allowed ones. Models are plain ``nn.Sequential`` stacks wherever
possible, with readable module names (``fc1``, ``act1`` ... ``out``), so that the Probe's
layer names mean something and treat can rewrite them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from .checks import check_choice, check_fraction, check_int
from .stats import WEIGHT_LAYER_TYPES

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "prelu": nn.PReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
}
ACTIVATION_ALIASES = {"swish": "silu"}
INITS = (
    "default",
    "xavier",
    "xavier_normal",
    "xavier_uniform",
    "he",
    "he_normal",
    "he_uniform",
    "orthogonal",
    "lecun",
)
NORMS = ("none", "batch", "layer")


def _activation(name: str) -> str:
    if isinstance(name, str):
        name = ACTIVATION_ALIASES.get(name, name)
    return check_choice("activation", name, ACTIVATIONS)


def _check_init(init: str) -> str:
    if isinstance(init, str) and init.startswith("normal:"):
        try:
            sigma = float(init.split(":", 1)[1])
        except ValueError:
            sigma = math.nan
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(
                f"init {init!r}: write normal:SIGMA with a positive SIGMA, e.g. normal:0.05"
            )
        return init
    allowed = list(INITS) + ["normal:SIGMA"]
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(allowed)}; got {init!r}")
    return init


def _gain(activation: str) -> float:
    """The gain that keeps the variance of activations steady through a layer."""
    if activation in ("relu", "prelu", "elu", "silu", "gelu"):
        return math.sqrt(2.0)
    if activation == "leaky_relu":
        return nn.init.calculate_gain("leaky_relu", 0.01)
    if activation == "tanh":
        return 5.0 / 3.0
    if activation == "selu":
        return 0.75
    return 1.0


# The weight layers (one definition, deepdoctor.stats); attention owns its q/k/v projection
# (in_proj_weight) directly, so it is one too.
INIT_TARGETS = WEIGHT_LAYER_TYPES


def init_weights(model: nn.Module, init: str, activation: str = "relu") -> nn.Module:
    """Re-initialise the weights of every Linear, Conv and recurrent layer of ``model``.

    Embeddings, norms and learned positions keep their own initialisation.

    default: leave torch's own initialisation. xavier (= xavier_normal), xavier_uniform:
    Glorot & Bengio 2010, gain 1. he (= he_normal), he_uniform: He et al. 2015, fan-in,
    gain for ReLU. orthogonal: Saxe et al. 2014, with the activation's gain. lecun: N(0,
    1/fan_in). normal:SIGMA: N(0, SIGMA^2) for every weight. Biases are set to zero except
    with ``default``.
    """
    init = _check_init(init)
    if init == "default":
        return model
    for module in model.modules():
        if not isinstance(module, INIT_TARGETS):
            continue
        for pname, p in module.named_parameters(recurse=False):
            if "bias" in pname:
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                _init_tensor(p, init, activation)
    return model


def _init_tensor(w: torch.Tensor, init: str, activation: str) -> None:
    with torch.no_grad():
        if init.startswith("normal:"):
            nn.init.normal_(w, 0.0, float(init.split(":", 1)[1]))
        elif init in ("xavier", "xavier_normal"):
            nn.init.xavier_normal_(w)
        elif init == "xavier_uniform":
            nn.init.xavier_uniform_(w)
        elif init in ("he", "he_normal"):
            nn.init.kaiming_normal_(w, nonlinearity="relu")
        elif init == "he_uniform":
            nn.init.kaiming_uniform_(w, nonlinearity="relu")
        elif init == "orthogonal":
            nn.init.orthogonal_(w, gain=_gain(activation))
        elif init == "lecun":
            fan_in = w[0].numel()
            nn.init.normal_(w, 0.0, 1.0 / math.sqrt(fan_in))


class Residual(nn.Module):
    """x + f(x): the identity path lets gradients skip the block.

    gated=True makes it x + g * f(x) with a learned scalar g that starts at 0 (SkipInit, De &
    Smith 2020; ReZero, Bachlechner et al. 2020): the stack starts as the identity, so a
    thousand blocks neither add up their outputs' drift (a sigmoid's output has mean 1/2)
    nor need normalisation, and each block joins in as its gate grows.
    """

    def __init__(self, body: nn.Module, gated: bool = False, gate_scale: float = 1.0) -> None:
        super().__init__()
        self.body = body
        self.gate = nn.Parameter(torch.zeros(())) if gated else None
        self.gate_scale = gate_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            return x + self.body(x)
        return x + (self.gate_scale * self.gate) * self.body(x)


def _check_common(activation: str, init: str, norm: str, dropout: float) -> str:
    activation = _activation(activation)
    _check_init(init)
    check_choice("norm", norm, NORMS)
    check_fraction("dropout", dropout, high_open=True)
    return activation


def _hidden(
    fc: nn.Module, width: int, activation: str, norm: str, dropout: float, conv_dim: int = 0
) -> list[tuple[str, nn.Module]]:
    """The parts after a weight layer: [norm], activation, [dropout]."""
    parts: list[tuple[str, nn.Module]] = [("fc", fc)]
    if norm == "batch":
        parts.append(
            ("norm", {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[conv_dim](width))
        )
    elif norm == "layer":
        parts.append(("norm", nn.LayerNorm(width) if conv_dim == 0 else nn.GroupNorm(1, width)))
    parts.append(("act", ACTIVATIONS[activation]()))
    if dropout > 0:
        parts.append(("drop", nn.Dropout(dropout)))
    return parts


def mlp(
    in_features: int,
    n_classes: int,
    depth: int = 3,
    width: int = 64,
    activation: str = "relu",
    init: str = "default",
    norm: str = "none",
    residual: bool = False,
    dropout: float = 0.0,
    bias: bool = True,
) -> nn.Sequential:
    """A multilayer perceptron with ``depth`` hidden layers of ``width`` units.

    Names: ``fc1, norm1, act1, drop1, ..., out``; with ``residual=True`` hidden layers 2..depth
    become ``block2 ... blockD`` (``x + act(norm(fc(x)))``).

    >>> model = mlp(64, 10, depth=2, width=30, activation="sigmoid")
    >>> sum(p.numel() for p in model.parameters())  # (64*30+30) + (30*30+30) + (30*10+10)
    3190
    """
    in_features = check_int("in_features", in_features, minimum=1)
    n_classes = check_int("n_classes", n_classes, minimum=1)
    depth = check_int("depth", depth, minimum=0)
    width = check_int("width", width, minimum=1)
    activation = _check_common(activation, init, norm, dropout)
    layers: list[tuple[str, nn.Module]] = []
    fan_in = in_features
    for i in range(1, depth + 1):
        parts = _hidden(nn.Linear(fan_in, width, bias=bias), width, activation, norm, dropout)
        if residual and i > 1:
            layers.append((f"block{i}", Residual(nn.Sequential(OrderedDict(parts)))))
        else:
            layers += [(f"{n}{i}", m) for n, m in parts]
        fan_in = width
    layers.append(("out", nn.Linear(fan_in, n_classes, bias=bias)))
    model = nn.Sequential(OrderedDict(layers))
    return init_weights(model, init, activation)  # type: ignore[return-value]


def cnn(
    input_shape: tuple[int, ...],
    n_classes: int,
    depth: int = 3,
    width: int = 32,
    activation: str = "relu",
    init: str = "default",
    norm: str = "none",
    residual: bool = False,
    dropout: float = 0.0,
    kernel_size: int = 3,
    downsample_every: int = 2,
) -> nn.Sequential:
    """A small convolutional classifier for (C, L) signals or (C, H, W) images.

    ``depth`` conv layers of ``width`` channels (kernel 3, same padding). Every
    ``downsample_every``-th layer halves the spatial size with stride 2 while it is at least 4;
    with ``residual=True`` the other layers (same shape in and out) become residual blocks.
    The head flattens and maps to the classes.
    """
    if not isinstance(input_shape, tuple | list) or len(input_shape) not in (2, 3):
        raise ValueError(
            f"input_shape must be (channels, length) or (channels, height, width), "
            f"got {input_shape!r}"
        )
    shape = [check_int("input_shape", s, minimum=1) for s in input_shape]
    n_classes = check_int("n_classes", n_classes, minimum=1)
    depth = check_int("depth", depth, minimum=1)
    width = check_int("width", width, minimum=1)
    kernel_size = check_int("kernel_size", kernel_size, minimum=1)
    downsample_every = check_int("downsample_every", downsample_every, minimum=1)
    activation = _check_common(activation, init, norm, dropout)
    dim = len(shape) - 1
    conv_cls = nn.Conv1d if dim == 1 else nn.Conv2d
    layers: list[tuple[str, nn.Module]] = []
    channels, spatial = shape[0], shape[1:]
    for i in range(1, depth + 1):
        stride = 2 if i % downsample_every == 0 and min(spatial) >= 4 else 1
        conv = conv_cls(channels, width, kernel_size, stride=stride, padding=kernel_size // 2)
        parts = _hidden(conv, width, activation, norm, dropout, conv_dim=dim)
        if residual and stride == 1 and channels == width:
            layers.append((f"block{i}", Residual(nn.Sequential(OrderedDict(parts)))))
        else:
            layers += [(f"{n}{i}", m) for n, m in parts]
        spatial = [(s + 2 * (kernel_size // 2) - kernel_size) // stride + 1 for s in spatial]
        channels = width
    layers.append(("flatten", nn.Flatten()))
    layers.append(("out", nn.Linear(channels * math.prod(spatial), n_classes)))
    model = nn.Sequential(OrderedDict(layers))
    return init_weights(model, init, activation)  # type: ignore[return-value]


class EncoderBlock(nn.Module):
    """One transformer encoder block; pre-LN puts the norm inside the residual branch."""

    def __init__(
        self,
        width: int,
        heads: int,
        activation: str,
        pre_ln: bool,
        dropout: float,
        ffn_mult: int = 2,
    ) -> None:
        super().__init__()
        self.pre_ln = pre_ln
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(width)
        self.ffn = nn.Sequential(
            OrderedDict(
                [
                    ("fc1", nn.Linear(width, ffn_mult * width)),
                    ("act", ACTIVATIONS[activation]()),
                    ("fc2", nn.Linear(ffn_mult * width, width)),
                ]
            )
        )
        self.norm2 = nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_ln:
            h = self.norm1(x)
            x = x + self.drop(self.attn(h, h, h, need_weights=False)[0])
            return x + self.drop(self.ffn(self.norm2(x)))
        x = self.norm1(x + self.drop(self.attn(x, x, x, need_weights=False)[0]))
        return self.norm2(x + self.drop(self.ffn(x)))


class SequenceEmbedding(nn.Module):
    """Token ids (N, T) or features (N, T, F) or a flat signal (N, T) -> (N, T, width)."""

    def __init__(self, seq_len: int, width: int, vocab_size: int | None, in_features: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.in_features = in_features
        if vocab_size is not None:
            self.proj: nn.Module = nn.Embedding(vocab_size, width)
        else:
            self.proj = nn.Linear(in_features, width)
        self.pos = nn.Parameter(torch.randn(seq_len, width) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.vocab_size is None and x.dim() == 2:
            x = x.unsqueeze(-1)
        return self.proj(x) + self.pos[: x.shape[1]]


class TransformerClassifier(nn.Module):
    def __init__(
        self,
        embed: SequenceEmbedding,
        blocks: list[EncoderBlock],
        width: int,
        n_classes: int,
        pre_ln: bool,
    ) -> None:
        super().__init__()
        self.embed = embed
        self.blocks = nn.Sequential(*blocks)
        # Pre-LN leaves the residual stream un-normalised: a final norm is standard.
        self.final_norm = nn.LayerNorm(width) if pre_ln else nn.Identity()
        self.out = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.final_norm(self.blocks(self.embed(x)))
        return self.out(h.mean(dim=1))


def transformer(
    seq_len: int,
    n_classes: int,
    depth: int = 2,
    width: int = 64,
    heads: int = 4,
    activation: str = "gelu",
    init: str = "default",
    pre_ln: bool = True,
    dropout: float = 0.0,
    vocab_size: int | None = None,
    in_features: int = 1,
) -> TransformerClassifier:
    """A transformer encoder classifier (mean-pooled), pre-LN or post-LN.

    Inputs are token ids (N, T) when ``vocab_size`` is given, otherwise float features
    (N, T, in_features) or a flat signal (N, T) read as one feature per position.
    """
    seq_len = check_int("seq_len", seq_len, minimum=1)
    n_classes = check_int("n_classes", n_classes, minimum=1)
    depth = check_int("depth", depth, minimum=1)
    width = check_int("width", width, minimum=1)
    heads = check_int("heads", heads, minimum=1)
    if width % heads:
        raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
    if vocab_size is not None:
        vocab_size = check_int("vocab_size", vocab_size, minimum=1)
    in_features = check_int("in_features", in_features, minimum=1)
    activation = _check_common(activation, init, "none", dropout)
    embed = SequenceEmbedding(seq_len, width, vocab_size, in_features)
    blocks = [EncoderBlock(width, heads, activation, pre_ln, dropout) for _ in range(depth)]
    model = TransformerClassifier(embed, blocks, width, n_classes, pre_ln)
    return init_weights(model, init, activation)  # type: ignore[return-value]


RNN_CELLS = ("rnn", "lstm", "gru")


class RecurrentClassifier(nn.Module):
    """Reads a sequence, classifies from the last hidden state."""

    def __init__(self, rnn: nn.RNNBase, head: nn.Sequential) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(-1)
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def rnn(
    in_features: int,
    n_classes: int,
    cell: str = "lstm",
    depth: int = 1,
    width: int = 64,
    activation: str = "tanh",
    init: str = "default",
    norm: str = "none",
    dropout: float = 0.0,
) -> RecurrentClassifier:
    """A recurrent classifier: vanilla RNN, LSTM or GRU, ``depth`` stacked layers.

    Inputs are (N, T, in_features), or (N, T) read as one feature per step. The vanilla RNN's
    recurrence uses ``activation`` when it is tanh or relu (the two torch supports there)
    and tanh otherwise; LSTM and GRU gates are fixed. Every cell is followed by a hidden head
    layer ``head.fc -> [norm] -> head.act -> [dropout] -> head.out`` that uses ``activation``,
    so every activation can be studied with every cell.
    """
    in_features = check_int("in_features", in_features, minimum=1)
    n_classes = check_int("n_classes", n_classes, minimum=1)
    cell = check_choice("cell", cell, RNN_CELLS)
    depth = check_int("depth", depth, minimum=1)
    width = check_int("width", width, minimum=1)
    activation = _check_common(activation, init, norm, dropout)
    inter_dropout = dropout if depth > 1 else 0.0
    if cell == "rnn":
        nonlinearity = activation if activation in ("tanh", "relu") else "tanh"
        core: nn.RNNBase = nn.RNN(
            in_features,
            width,
            depth,
            nonlinearity=nonlinearity,
            batch_first=True,
            dropout=inter_dropout,
        )
    else:
        cls = nn.LSTM if cell == "lstm" else nn.GRU
        core = cls(in_features, width, depth, batch_first=True, dropout=inter_dropout)
    head_parts = _hidden(nn.Linear(width, width), width, activation, norm, dropout)
    head = nn.Sequential(OrderedDict(head_parts + [("out", nn.Linear(width, n_classes))]))
    model = RecurrentClassifier(core, head)
    return init_weights(model, init, activation)  # type: ignore[return-value]


def n_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "cnn": cnn,
    "transformer": transformer,
    "rnn": rnn,
}


class BuilderSpec:
    """A model builder that remembers its arguments, so a remedy can rebuild it changed.

    ``spec("mlp", in_features=64, n_classes=10, depth=3)`` is a callable returning a fresh
    model, usable as ``Experiment.model``; ``more_capacity`` reads and widens its ``width``.
    """

    def __init__(self, name: str, **kwargs: object) -> None:
        self.name = check_choice("builder", name, BUILDERS)
        self.kwargs = dict(kwargs)

    def __call__(self) -> nn.Module:
        return BUILDERS[self.name](**self.kwargs)

    def replace(self, **changes: object) -> BuilderSpec:
        return BuilderSpec(self.name, **{**self.kwargs, **changes})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"deepdoctor.models.{self.name}({args})"


def spec(name: str, **kwargs: object) -> BuilderSpec:
    return BuilderSpec(name, **kwargs)

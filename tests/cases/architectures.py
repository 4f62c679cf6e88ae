"""Models of the later families that ``deepdoctor.models`` does not build: an MLP whose
activations are function calls, a torchvision-style ResNet written out, and Hugging Face
BERT / GPT-2 built from tiny configs (no weights downloaded), wrapped so that
``forward(x)`` returns logits of shape (batch, classes)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
}


class FunctionalMLP(nn.Module):
    """Linear layers with the activation applied as a call (``F.relu(fc(x))``), no activation
    module anywhere. ``functional_activation`` names it for ``tests/cases/verify.py``, which
    knows what it built and measures the next layer's input accordingly."""

    def __init__(self, sizes: list[int], activation: str) -> None:
        super().__init__()
        self.functional_activation = activation
        self.hidden = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-2], sizes[1:-1], strict=True)
        )
        self.out = nn.Linear(sizes[-2], sizes[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = FUNCTIONS[self.functional_activation]
        for fc in self.hidden:
            x = act(fc(x))
        return self.out(x)


def functional_mlp(
    features: int,
    classes: int,
    depth: int,
    width: int,
    activation: str,
    init: str = "he",
    bias: float | None = None,
) -> FunctionalMLP:
    """``init``: "he" (kaiming normal, fan in), or "normal:S" (N(0, S^2)); ``bias``: every
    hidden bias at this value (torch's default otherwise)."""
    model = FunctionalMLP([features] + [width] * depth + [classes], activation)
    with torch.no_grad():
        for fc in model.hidden:
            if init == "he":
                nn.init.kaiming_normal_(fc.weight, nonlinearity="relu")
            else:
                fc.weight.normal_(0.0, float(init.split(":", 1)[1]))
            if bias is not None:
                fc.bias.fill_(bias)
    return model


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: conv-BN-ReLU-conv-BN, plus the identity (or a 1x1
    conv-BN when the shape changes), then ReLU; one ReLU module used twice, as there."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A small torchvision-style ResNet for (C, H, W) images: a 3x3 stem, two stages of
    ``blocks`` BasicBlocks (width, then 2x width at stride 2), global average pool, fc; He
    init of the convs and BN weights 1, biases 0, as torchvision."""

    def __init__(self, channels: int, classes: int, width: int = 16, blocks: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(*[BasicBlock(width, width) for _ in range(blocks)])
        self.layer2 = nn.Sequential(
            BasicBlock(width, 2 * width, 2),
            *[BasicBlock(2 * width, 2 * width) for _ in range(blocks - 1)],
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class HFClassifier(nn.Module):
    """A Hugging Face ``...ForSequenceClassification`` read as ``forward(ids) -> logits``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=x).logits


def bert(vocab: int, length: int, classes: int, width: int = 32, layers: int = 2) -> HFClassifier:
    """A tiny ``BertForSequenceClassification`` from a config (4 heads, FFN 2x width, no
    dropout so that runs are deterministic in the loss), classifying from token 0's pooled
    state."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=vocab,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * width,
        max_position_embeddings=length,
        num_labels=classes,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return HFClassifier(BertForSequenceClassification(config))


def gpt2(vocab: int, length: int, classes: int, width: int = 32, layers: int = 2) -> HFClassifier:
    """A tiny ``GPT2ForSequenceClassification`` from a config (4 heads, no dropout),
    classifying from the last token (padding id 0, which the data never uses)."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    config = GPT2Config(
        vocab_size=vocab,
        n_embd=width,
        n_layer=layers,
        n_head=4,
        n_positions=length,
        num_labels=classes,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return HFClassifier(GPT2ForSequenceClassification(config))

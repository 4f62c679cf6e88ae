"""remedies: each one's transformation, with numbers; composition, conflicts, bad input."""

from __future__ import annotations

import inspect
import math
import textwrap
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepdoctor as dd
from deepdoctor.models import Residual
from deepdoctor.remedies import (
    CONFLICTS,
    ORDER,
    REMEDIES,
    Context,
    Prescription,
    apply_remedies,
    compatible,
    lr_range,
)
from deepdoctor.remedies import data as data_remedies
from deepdoctor.remedies.lr_range import RangeTest, range_test
from deepdoctor.remedies.optimization import ADAM_LR

# The remedy names of the public contract (DESIGN.md), spelled out so a rename fails here.
CONTRACT = [
    "he_init",
    "xavier_init",
    "orthogonal_init",
    "relu_activation",
    "leaky_relu_activation",
    "batch_norm",
    "layer_norm",
    "residual",
    "gradient_clipping",
    "lower_lr",
    "raise_lr",
    "lr_warmup",
    "adam",
    "standardize_inputs",
    "class_weights",
    "dropout",
    "weight_decay",
    "early_stopping",
    "data_augmentation",
    "more_capacity",
    "less_capacity",
    "train_longer",
    # added with the pretrained_drift kind (issue 15): the names above keep their meaning
    "discriminative_lr",
    "freeze_pretrained",
]


@pytest.fixture(scope="module")
def digits() -> dd.data.Split:
    return dd.data.load("digits")


@pytest.fixture(scope="module")
def raw_digits() -> dd.data.Split:
    return dd.data.load("digits", standardize=False)


def sgd(lr: float, momentum: float = 0.0) -> Callable[..., torch.optim.Optimizer]:
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum)


def experiment(split: dd.data.Split, model: Callable[[], nn.Module], **kw: object) -> dd.Experiment:
    options: dict[str, object] = {"optimizer": sgd(0.1), "steps": 30, "n_classes": 10}
    options.update(kw)
    return dd.Experiment(model, split.train, split.val, **options)


def context(split: dd.data.Split, **kw: object) -> Context:
    return Context(example=split.X_train[:8], **kw)


def sick_spec() -> dd.models.BuilderSpec:
    """A sigmoid MLP built from a spec: every remedy has something to change in it."""
    return dd.models.spec(
        "mlp", in_features=64, n_classes=10, depth=3, width=32, activation="sigmoid"
    )


def opt_of(exp: dd.Experiment, model: nn.Module | None = None) -> torch.optim.Optimizer:
    assert exp.optimizer is not None
    return exp.optimizer((model or exp.build()).parameters())


def count(model: nn.Module, cls: type | tuple[type, ...]) -> int:
    return sum(isinstance(m, cls) for m in model.modules())


# -- the registry ---------------------------------------------------------------------------


def test_every_contract_name_is_a_remedy_and_ordered_once() -> None:
    assert sorted(REMEDIES) == sorted(CONTRACT)
    assert sorted(ORDER) == sorted(CONTRACT) and len(ORDER) == len(set(ORDER))
    assert all(REMEDIES[n].name == n and REMEDIES[n].description for n in REMEDIES)
    # structure before initialisation, initialisation before training settings
    assert ORDER.index("residual") < ORDER.index("he_init") < ORDER.index("adam")
    assert ORDER.index("more_capacity") < ORDER.index("batch_norm")


def test_unknown_remedy_is_a_clear_value_error(digits: dd.data.Split) -> None:
    exp = experiment(digits, sick_spec())
    with pytest.raises(ValueError, match=r"unknown remedies \['frobnicate'\]; available: ") as info:
        apply_remedies(exp, ["he_init", "frobnicate"], context(digits))
    listed = str(info.value).split("available: ")[1].split(", ")
    assert sorted(listed) == sorted(CONTRACT)


@pytest.mark.parametrize("pair", [sorted(p) for p in CONFLICTS])
def test_conflicting_pairs_are_never_compatible(pair: list[str]) -> None:
    assert not compatible(pair)
    assert not compatible(pair + ["adam", "dropout"])


def test_compatible_sets() -> None:
    assert compatible([])
    assert compatible(["relu_activation", "he_init", "batch_norm", "residual", "adam"])
    assert compatible(["lower_lr", "gradient_clipping", "lr_warmup"])
    assert compatible(iter(["dropout", "weight_decay"]))  # any iterable


# -- architecture ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,cls", [("batch_norm", nn.BatchNorm1d), ("layer_norm", nn.LayerNorm)])
def test_norm_goes_after_each_hidden_linear_and_not_the_output(
    digits: dd.data.Split, name: str, cls: type[nn.Module]
) -> None:
    exp = experiment(digits, sick_spec())
    model = apply_remedies(exp, [name], context(digits)).build()
    assert count(model, cls) == 3
    for i in (1, 2, 3):
        linear, norm = model.get_submodule(f"fc{i}").children()
        assert isinstance(linear, nn.Linear) and isinstance(norm, cls)
        assert norm.weight.shape == (32,)  # one scale per hidden unit
    assert isinstance(model.get_submodule("out"), nn.Linear)  # logits stay unnormalised
    assert model(digits.X_train[:5]).shape == (5, 10)


@pytest.mark.parametrize("name,cls", [("batch_norm", nn.BatchNorm2d), ("layer_norm", nn.GroupNorm)])
def test_norm_after_each_conv(name: str, cls: type[nn.Module]) -> None:
    split = dd.data.load("digits", flatten=False)
    exp = experiment(split, lambda: dd.models.cnn((1, 8, 8), 10, depth=3, width=8))
    model = apply_remedies(exp, [name], context(split)).build()
    norms = [m for m in model.modules() if isinstance(m, cls)]
    assert len(norms) == 3
    assert all(m.weight.shape == (8,) for m in norms)  # one scale per channel
    assert all(m.num_groups == 1 for m in norms if isinstance(m, nn.GroupNorm))
    assert model(split.X_train[:5]).shape == (5, 10)


def test_norm_on_an_already_normalised_model_is_a_prescription(digits: dd.data.Split) -> None:
    exp = experiment(digits, lambda: dd.models.mlp(64, 10, depth=2, norm="batch"))
    with pytest.raises(Prescription, match="found no Linear/Conv layer followed by an activation"):
        apply_remedies(exp, ["layer_norm"], context(digits))


@pytest.mark.parametrize("width,wrapped", [(64, 5), (32, 4)])
def test_residual_wraps_every_same_shape_block(
    digits: dd.data.Split, width: int, wrapped: int
) -> None:
    # Digits have 64 features: with width 64 the first block keeps its shape too.
    exp = experiment(digits, lambda: dd.models.mlp(64, 10, depth=5, width=width))
    model = apply_remedies(exp, ["residual"], context(digits)).build()
    blocks = [m for m in model.modules() if isinstance(m, Residual)]
    assert len(blocks) == wrapped
    assert all(isinstance(b.body[0], nn.Linear) and count(b.body, nn.ReLU) == 1 for b in blocks)
    assert isinstance(model[-1], nn.Linear) and model[-1].out_features == 10
    x = digits.X_train[:7]
    assert model(x).shape == (7, 10)
    block = blocks[-1]
    h = torch.randn(3, width)
    # gated skips: the identity at first, x + (g / sqrt(n)) * block(x) once the gate moves
    assert block.gate is not None and block.gate.item() == 0.0
    assert block.gate_scale == pytest.approx(wrapped**-0.5)
    assert torch.equal(block(h), h)
    with torch.no_grad():
        block.gate.fill_(2.0)
    expected = h + (2.0 * wrapped**-0.5) * block.body(h)
    assert torch.allclose(block(h), expected, atol=1e-6)


def test_residual_counts_conv_blocks_by_shape() -> None:
    split = dd.data.load("digits", flatten=False)
    # conv1 1->8 channels, conv2 and conv4 stride 2: only conv3 keeps its input's shape
    exp = experiment(split, lambda: dd.models.cnn((1, 8, 8), 10, depth=4, width=8))
    model = apply_remedies(exp, ["residual"], context(split)).build()
    assert [n for n, m in model.named_children() if isinstance(m, Residual)] == ["res_fc3"]
    assert model(split.X_train[:3]).shape == (3, 10)


class LoopNet(nn.Module):
    """A deep sigmoid MLP written as a loop over a ModuleList, with functional activations:
    no nn.Sequential, so the residual remedy has to go through torch.fx."""

    def __init__(self, depth: int = 8) -> None:
        super().__init__()
        self.inp = nn.Linear(64, 64)
        self.hidden = nn.ModuleList([nn.Linear(64, 64) for _ in range(depth)])
        self.out = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.sigmoid(self.inp(x))
        for fc in self.hidden:
            x = torch.sigmoid(fc(x))
        return self.out(x)


def test_residual_goes_through_fx_for_a_model_without_sequential(digits: dd.data.Split) -> None:
    exp = experiment(digits, lambda: LoopNet(depth=8))
    model = apply_remedies(exp, ["residual"], context(digits)).build()
    gates = [m for n, m in model.named_modules() if n.startswith("res_gate")]
    assert len(gates) == 9  # the input layer (64 -> 64) and the 8 hidden ones
    assert all(g.scale == pytest.approx(9**-0.5) for g in gates)  # type: ignore[union-attr]
    # every gate starts at 0, so the whole stack starts as the identity: out(x)
    x = digits.X_train[:5]
    with torch.no_grad():
        assert torch.allclose(model(x), model.out(x), atol=1e-6)  # type: ignore[operator]
        for g in gates:
            g.gate.fill_(1.0)  # type: ignore[union-attr,operator]
        # gates open: block i adds to the sum that block i-1 produced (a chain, not a fan)
        h = x
        layers = ["inp"] + [f"hidden.{i}" for i in range(8)]
        for fc in map(model.get_submodule, layers):
            h = h + 9**-0.5 * torch.sigmoid(fc(h))
        assert torch.allclose(model(x), model.out(h), atol=1e-5)  # type: ignore[operator]


def test_residual_on_an_untraceable_model_without_sequential_is_a_prescription(
    digits: dd.data.Split,
) -> None:
    exp = experiment(digits, Untraceable)
    with pytest.raises(Prescription, match="torch.fx cannot trace it"):
        apply_remedies(exp, ["residual"], context(digits))


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x))


class UntraceableBlocks(nn.Module):
    """Two same-width blocks behind a branch on a tensor's value: fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.b1, self.b2, self.out = (
            nn.Linear(64, 16),
            _Block(),
            _Block(),
            nn.Linear(16, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        if h.mean() > 100:
            h = h / 2
        return self.out(self.b2(self.b1(h)))


def test_residual_on_an_untraceable_model_prescribes_runnable_code(digits: dd.data.Split) -> None:
    exp = experiment(digits, UntraceableBlocks)
    with pytest.raises(Prescription) as raised:
        apply_remedies(exp, ["residual"], context(digits))
    code = raised.value.instructions.split(":\n", 1)[1]
    assert "model.b1 = Residual(model.b1, gated=True, gate_scale=2 ** -0.5)" in code
    model = exp.build()
    exec(textwrap.dedent(code), {"model": model})  # the lines run as written
    assert isinstance(model.b1, dd.models.Residual) and isinstance(model.b2, dd.models.Residual)
    x = digits.X_val[:4]
    assert torch.allclose(model(x), model.out(model.inp(x)))  # gates at 0: the identity


def test_residual_makes_a_deep_sigmoid_mlp_train(digits: dd.data.Split) -> None:
    exp = experiment(
        digits, lambda: dd.models.mlp(64, 10, depth=20, width=64, activation="sigmoid"), steps=60
    )
    plain = exp.run().final
    treated = apply_remedies(exp, ["residual"], context(digits)).run().final
    assert plain["val_accuracy"] < 0.2  # 20 sigmoid layers: stuck near chance
    assert treated["val_accuracy"] > 0.6
    assert treated["train_loss"] < 0.7 * plain["train_loss"]


def test_residual_without_same_shape_blocks_is_a_prescription(digits: dd.data.Split) -> None:
    exp = experiment(digits, lambda: dd.models.mlp(64, 10, depth=1, width=32))
    with pytest.raises(Prescription, match=r"x \+ block\(x\)"):
        apply_remedies(exp, ["residual"], context(digits))
    already = experiment(digits, lambda: dd.models.mlp(64, 10, depth=3, residual=True))
    with pytest.raises(Prescription, match="already has residual blocks"):
        apply_remedies(already, ["residual"], context(digits))


class AttributeActs(nn.Module):
    """A custom module (not a Sequential) with its activations as attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(64, 16), nn.Linear(16, 16), nn.Linear(16, 10)
        self.a1, self.a2 = nn.Sigmoid(), nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.a2(self.fc2(self.a1(self.fc1(x)))))


class FunctionalActs(nn.Module):
    """Activations applied functionally, in a forward torch.fx can trace."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.out = nn.Linear(64, 16), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(torch.sigmoid(self.fc1(x))))


class Untraceable(FunctionalActs):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(self.fc1(x))
        if h.mean() > 0.5:
            h = h * 2
        return self.out(h)


def test_relu_activation_swaps_every_saturating_module(digits: dd.data.Split) -> None:
    exp = experiment(digits, sick_spec())
    model = apply_remedies(exp, ["relu_activation"], context(digits)).build()
    assert count(model, nn.ReLU) == 3 and count(model, (nn.Sigmoid, nn.Tanh)) == 0
    for make in (AttributeActs, lambda: nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Sigmoid())):
        swapped = apply_remedies(
            experiment(digits, make), ["relu_activation"], context(digits)
        ).build()
        assert count(swapped, nn.ReLU) == 2 and count(swapped, (nn.Sigmoid, nn.Tanh)) == 0
    leaky = apply_remedies(exp, ["leaky_relu_activation"], context(digits)).build()
    lrelus = [m for m in leaky.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(lrelus) == 3 and all(m.negative_slope == 0.01 for m in lrelus)


def test_relu_activation_rewrites_functional_calls_with_fx(digits: dd.data.Split) -> None:
    exp = experiment(digits, FunctionalActs)
    treated = apply_remedies(exp, ["relu_activation"], context(digits))
    model = treated.build()
    assert isinstance(model, torch.fx.GraphModule)
    assert "torch.sigmoid" not in model.code and "torch.tanh" not in model.code
    assert model.code.count("torch.nn.functional.relu(") == 2
    original = exp.build()  # same seed: same weights
    x = digits.X_train[:16]
    expected = original.out(F.relu(F.relu(original.fc1(x))))
    torch.testing.assert_close(model(x), expected)
    assert treated.run(steps=5).steps == 5  # and it trains


def test_untraceable_functional_activations_are_a_prescription(digits: dd.data.Split) -> None:
    exp = experiment(digits, Untraceable)
    with pytest.raises(Prescription, match="cannot be traced by torch.fx") as info:
        apply_remedies(exp, ["relu_activation"], context(digits))
    assert info.value.remedy == "relu_activation"
    assert "replace sigmoid/tanh calls in forward() by relu" in info.value.instructions


def test_relu_activation_on_a_relu_model_is_a_prescription(digits: dd.data.Split) -> None:
    exp = experiment(digits, lambda: dd.models.mlp(64, 10, depth=2))
    with pytest.raises(Prescription, match="already relu"):
        apply_remedies(exp, ["relu_activation"], context(digits))


# -- initialisation -------------------------------------------------------------------------


def hidden_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach() for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def test_he_init_gives_std_sqrt_2_over_fan_in(digits: dd.data.Split) -> None:
    exp = experiment(digits, lambda: dd.models.mlp(64, 10, depth=2, width=256))
    before = hidden_weights(exp.build())
    model = apply_remedies(exp, ["he_init"], context(digits)).build()
    for name, w in hidden_weights(model).items():
        fan_out, fan_in = w.shape
        target = math.sqrt(2 / fan_in)
        # sample std of n normals: relative error ~ 1/sqrt(2n); out (2560 weights) ~1.4%
        tol = 4 / math.sqrt(2 * w.numel())
        assert abs(w.std().item() / target - 1) < tol, name
        assert abs(w.mean().item()) < 4 * target / math.sqrt(w.numel())
        # torch's default (uniform, std 1/sqrt(3 fan_in)) is far from it
        assert before[name].std().item() < 0.6 * target
    biases = [m.bias.detach() for m in model.modules() if isinstance(m, nn.Linear)]
    assert all(float(b.abs().max()) == 0 for b in biases)


def test_xavier_init_gives_std_sqrt_2_over_fan_in_plus_fan_out(digits: dd.data.Split) -> None:
    exp = experiment(digits, lambda: dd.models.mlp(64, 10, depth=2, width=256))
    model = apply_remedies(exp, ["xavier_init"], context(digits)).build()
    for name, w in hidden_weights(model).items():
        fan_out, fan_in = w.shape
        target = math.sqrt(2 / (fan_in + fan_out))
        assert abs(w.std().item() / target - 1) < 4 / math.sqrt(2 * w.numel()), name


@pytest.mark.parametrize("activation,gain2", [("sigmoid", 1.0), ("relu", 2.0), ("tanh", 25 / 9)])
def test_orthogonal_init_rows_or_columns_are_orthonormal_times_the_gain(
    digits: dd.data.Split, activation: str, gain2: float
) -> None:
    exp = experiment(
        digits, lambda: dd.models.mlp(64, 10, depth=2, width=128, activation=activation)
    )
    model = apply_remedies(exp, ["orthogonal_init"], context(digits)).build()
    for name, w in hidden_weights(model).items():
        rows, cols = w.shape
        gram = w @ w.T if rows <= cols else w.T @ w  # the smaller side is orthonormal
        eye = torch.eye(min(rows, cols))
        torch.testing.assert_close(gram, gain2 * eye, atol=1e-4, rtol=0), name


def test_init_without_weight_layers_is_a_prescription(digits: dd.data.Split) -> None:
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(64, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.w

    with pytest.raises(Prescription, match="initialise your weight tensors with he by hand"):
        apply_remedies(experiment(digits, Scale), ["he_init"], context(digits))


# -- optimisation ---------------------------------------------------------------------------


def test_gradient_clipping_at_the_90th_percentile_of_the_norms(digits: dd.data.Split) -> None:
    norms = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, np.nan, np.inf], dtype=float)
    exp = experiment(digits, sick_spec())
    treated = apply_remedies(exp, ["gradient_clipping"], context(digits, grad_norms=norms))
    assert treated.clip_grad == pytest.approx(9.1)  # numpy's linear 90th percentile of 1..10
    assert exp.clip_grad is None
    code = treated.meta["changes"][-1]["code"]
    assert code.startswith("torch.nn.utils.clip_grad_norm_(model.parameters(), 9.1)")
    history = treated.run(steps=10)
    assert len(history.clipped) == 10
    with pytest.raises(Prescription, match="no finite gradient norm"):
        apply_remedies(exp, ["gradient_clipping"], context(digits, grad_norms=np.array([np.nan])))


def test_gradient_clipping_leaves_a_blow_up_out_of_the_percentile(digits: dd.data.Split) -> None:
    # the diverging preset's norms: ordinary steps, then the blow-up (measured)
    norms = np.array([22.7, 6.5, 1.65, 4.4, 3.21, 3.68, 0.35, 0.42, 0.72, 0.6, 2.37, 470.7])
    exp = experiment(digits, lambda: dd.models.mlp(64, 10, depth=2))
    treated = apply_remedies(exp, ["gradient_clipping"], context(digits, grad_norms=norms))
    typical = norms[norms <= 10 * np.median(norms)]  # only 470.7 exceeds 10 x 2.79
    assert len(typical) == 11
    assert treated.clip_grad == pytest.approx(6.5)  # the 90th percentile of the other 11
    assert np.percentile(norms, 90) > 20  # with the blow-up in, clipping would barely act


def deep_relu(split: dd.data.Split, lr: float, momentum: float = 0.9) -> dd.Experiment:
    """The user's case of issue "treat: repairs that are real": a 20-layer He ReLU MLP."""
    return experiment(
        split,
        lambda: dd.models.mlp(64, 10, depth=20, width=64, init="he"),
        optimizer=sgd(lr, momentum=momentum),
        steps=300,
    )


def no_suggestion(exp: dd.Experiment, steps: int = 100) -> RangeTest:
    """A range test in which no rate lowered the loss, for the remedies' fallbacks."""
    return RangeTest(base_lr=opt_of(exp).param_groups[0]["lr"], steps=7)


def test_range_test_sweeps_a_fresh_model_and_stops_at_divergence(digits: dd.data.Split) -> None:
    exp = deep_relu(digits, 0.5)
    start = {k: v.clone() for k, v in exp.build().state_dict().items()}
    test = range_test(exp)
    assert test == range_test(exp)  # seeded: the same curve twice
    assert test.base_lr == 0.5
    # exponential from 1e-6 towards 10 over 100 steps: a constant ratio between steps
    assert test.lrs[0] == pytest.approx(1e-6)
    assert np.diff(np.log(test.lrs)) == pytest.approx(math.log(1e7) / 99)
    # measured: stopped at step 85 (lr 0.59) once the smoothed loss passed 4x its best
    assert test.stopped == "diverged" and 50 < test.steps < 100
    assert test.smoothed[-1] > 4 * min(test.smoothed)
    # the suggestion: a tenth of the rate at the minimum (measured 0.0123; 0.0034 and 0.0064
    # at seeds 1 and 2), where SGD at 0.01 reaches 90% and the old /10 rule's 0.05 30%
    at = int(np.argmin(test.smoothed[10:])) + 10
    assert test.suggestion == pytest.approx(test.lrs[at] / 10)
    assert test.suggestion is not None and 1e-3 < test.suggestion < 0.05
    # the experiment's own model is untouched: a build is the same weights as before
    assert all(torch.equal(v, start[k]) for k, v in exp.build().state_dict().items())


def test_lower_lr_takes_the_range_tests_rate_and_records_its_steps(
    digits: dd.data.Split,
) -> None:
    exp = deep_relu(digits, 0.5)
    test = range_test(exp)
    assert test.suggestion is not None
    treated = apply_remedies(exp, ["lower_lr"], context(digits, kinds={"diverging_loss"}))
    opt = opt_of(treated)
    assert opt.param_groups[0]["lr"] == pytest.approx(test.suggestion)
    assert opt.param_groups[0]["momentum"] == 0.9  # the rest of the optimizer is kept
    change = treated.meta["changes"][-1]
    assert change == {
        "remedy": "lower_lr",
        "code": f"lr = {test.suggestion:.4g}  # was 0.5; from a learning-rate range test",
        "steps": test.steps,  # the compute the range test spent, for treat's ledger
        "range_test": lr_range.sweep_key(exp, lr_range.range_steps(exp)),  # charged once
    }
    assert opt_of(exp).param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize(
    "kinds,lr",
    [
        ({"diverging_loss"}, 0.03),
        ({"nonfinite"}, 0.03),
        ({"exploding_gradients", "dead_units"}, 0.03),
        ({"oscillating_loss"}, 0.1),
        (set(), 0.1),
    ],
)
def test_lower_lr_without_a_range_test_rate_divides_by_10_after_divergence_else_by_3(
    digits: dd.data.Split, monkeypatch: pytest.MonkeyPatch, kinds: set[str], lr: float
) -> None:
    monkeypatch.setattr(lr_range, "range_test", no_suggestion)
    exp = experiment(digits, sick_spec(), optimizer=sgd(0.3, momentum=0.9))
    treated = apply_remedies(exp, ["lower_lr"], context(digits, base_lr=0.3, kinds=kinds))
    opt = opt_of(treated)
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["lr"] == pytest.approx(lr)
    assert opt.param_groups[0]["momentum"] == 0.9  # the rest of the optimizer is kept
    divisor = "10" if lr == 0.03 else "3"
    assert treated.meta["changes"][-1]["code"] == (
        f"lr = {lr:.4g}  # was 0.3; /{divisor}: a learning-rate range test found no rate "
        "that lowered the loss"
    )
    assert treated.meta["changes"][-1]["steps"] == 7
    assert opt_of(exp).param_groups[0]["lr"] == 0.3


def test_lower_lr_keeps_a_tenth_when_the_range_test_suggests_a_higher_rate(
    digits: dd.data.Split,
) -> None:
    exp = deep_relu(digits, 1e-4)
    treated = apply_remedies(exp, ["lower_lr"], context(digits, kinds={"diverging_loss"}))
    assert opt_of(treated).param_groups[0]["lr"] == pytest.approx(1e-5)
    code = treated.meta["changes"][-1]["code"]
    assert code.startswith("lr = 1e-05  # was 0.0001; /10: a learning-rate range test suggested")


def test_lower_lr_without_an_optimizer_scales_the_default_sgd(digits: dd.data.Split) -> None:
    exp = experiment(digits, sick_spec(), optimizer=None)
    treated = apply_remedies(exp, ["lower_lr"], context(digits, kinds={"diverging_loss"}))
    # A 30-step experiment gets a range test of lr_range.MIN_RANGE_STEPS (50) steps, in which
    # this sigmoid MLP's loss does not fall at any rate (over 100 steps it suggested 0.045), so
    # the rate after a divergence is the default SGD's divided by 10, and the change says why.
    assert opt_of(treated).param_groups[0]["lr"] == pytest.approx(dd.training.DEFAULT_LR / 10)
    code = treated.meta["changes"][-1]["code"]
    assert "# was 0.1; /10: a learning-rate range test found no rate" in code


def test_raise_lr_takes_the_range_tests_rate_for_a_crawling_run(digits: dd.data.Split) -> None:
    exp = deep_relu(digits, 1e-4, momentum=0.0)
    test = range_test(exp)
    treated = apply_remedies(exp, ["raise_lr"], context(digits, base_lr=1e-4))
    # measured 0.074 (0.028 and 0.196 at seeds 1 and 2): SGD at 1e-4 scores 12% in 300 steps,
    # at 0.074 73%
    assert test.suggestion is not None and 0.01 < test.suggestion < 1.0
    assert opt_of(treated).param_groups[0]["lr"] == pytest.approx(test.suggestion)
    assert treated.meta["changes"][-1]["code"] == (
        f"lr = {test.suggestion:.4g}  # was 0.0001; from a learning-rate range test"
    )
    assert treated.meta["changes"][-1]["steps"] == test.steps


@pytest.mark.parametrize(
    "ratio,factor", [(1e-4, 10.0), (2e-4, 5.0), (1e-6, 30.0), (1e-2, 3.0), (math.nan, 3.0)]
)
def test_raise_lr_without_a_range_test_rate_aims_at_an_update_ratio_of_1e_3(
    digits: dd.data.Split, monkeypatch: pytest.MonkeyPatch, ratio: float, factor: float
) -> None:
    monkeypatch.setattr(lr_range, "range_test", no_suggestion)
    exp = experiment(digits, sick_spec(), optimizer=sgd(0.01))
    treated = apply_remedies(exp, ["raise_lr"], context(digits, base_lr=0.01, update_ratio=ratio))
    assert opt_of(treated).param_groups[0]["lr"] == pytest.approx(0.01 * factor)
    assert (
        f"; x{factor:.3g}: a learning-rate range test found no rate"
        in (treated.meta["changes"][-1]["code"])
    )


def test_raise_lr_keeps_the_update_ratio_rule_when_the_rate_is_already_high(
    digits: dd.data.Split,
) -> None:
    exp = deep_relu(digits, 5.0)
    treated = apply_remedies(exp, ["raise_lr"], context(digits, base_lr=5.0, update_ratio=1e-4))
    assert opt_of(treated).param_groups[0]["lr"] == pytest.approx(50.0)
    assert (
        "# was 5; x10: a learning-rate range test suggested"
        in (treated.meta["changes"][-1]["code"])
    )


@pytest.mark.parametrize("name", ["lower_lr", "raise_lr"])
def test_a_learning_rate_of_zero_is_a_prescription(digits: dd.data.Split, name: str) -> None:
    exp = experiment(digits, sick_spec(), optimizer=sgd(0.0))
    with pytest.raises(Prescription, match="learning rate is 0.0; set a positive one"):
        apply_remedies(exp, [name], context(digits))


def test_lr_warmup_ramps_the_learning_rate(
    digits: dd.data.Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = experiment(
        digits, lambda: dd.models.mlp(64, 10, depth=2, width=32), optimizer=sgd(0.2), steps=50
    )
    test = range_test(exp, steps=lr_range.range_steps(exp))
    warm = test.warmup_steps(0.2, 50)
    assert warm is not None and 1 <= warm <= 12  # 2% to 25% of the run
    treated = apply_remedies(exp, ["lr_warmup"], context(digits))
    assert (treated.schedule, treated.warmup_steps) == ("warmup", warm)
    assert treated.meta["changes"][-1]["steps"] == test.steps  # the range test's compute
    lrs = treated.run().lr
    assert lrs[:warm] == pytest.approx([0.2 * (t + 1) / warm for t in range(warm)])
    assert lrs[warm:] == pytest.approx([0.2] * (50 - warm))
    # the line changes.py gives the user makes the same rates in a loop of their own
    line = treated.meta["changes"][-1]["code"].splitlines()[1]
    opt = torch.optim.SGD(exp.build().parameters(), lr=0.2)
    names: dict[str, object] = {"torch": torch, "optimizer": opt}
    exec(line, names)
    own = []
    for _ in range(50):
        own.append(opt.param_groups[0]["lr"])
        opt.step()
        names["scheduler"].step()  # type: ignore[attr-defined]
    assert own == pytest.approx(lrs, rel=1e-12)
    cosine = apply_remedies(exp.replace(schedule="cosine"), ["lr_warmup"], context(digits))
    assert cosine.schedule == "warmup_cosine"
    # a range test whose loss never moved: 10% of the run
    monkeypatch.setattr(lr_range, "range_test", no_suggestion)
    fallback = apply_remedies(exp, ["lr_warmup"], context(digits))
    assert fallback.warmup_steps == 5
    assert fallback.run().lr[:5] == pytest.approx([0.04, 0.08, 0.12, 0.16, 0.2])


def test_adam_switches_the_optimizer(digits: dd.data.Split) -> None:
    exp = experiment(digits, sick_spec())
    opt = opt_of(apply_remedies(exp, ["adam"], context(digits)))
    assert type(opt) is torch.optim.Adam and opt.param_groups[0]["lr"] == ADAM_LR == 1e-3
    adam = exp.replace(optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    with pytest.raises(Prescription, match="already Adam"):
        apply_remedies(adam, ["adam"], context(digits))


def test_train_longer_doubles_the_steps(digits: dd.data.Split) -> None:
    exp = experiment(digits, sick_spec(), steps=30)
    treated = apply_remedies(exp, ["train_longer"], context(digits))
    assert treated.steps == 60 and exp.steps == 30
    assert treated.meta["changes"][-1]["code"] == "steps = 60  # was 30"


# -- data -----------------------------------------------------------------------------------


def test_standardize_inputs_uses_the_training_statistics(raw_digits: dd.data.Split) -> None:
    exp = experiment(raw_digits, sick_spec())
    treated = apply_remedies(exp, ["standardize_inputs"], context(raw_digits))
    X, Xv = treated.train[0], treated.val[0]
    mean, std = raw_digits.X_train.mean(0), raw_digits.X_train.std(0)
    floor = 0.1 * float(std.median())  # no feature scaled up past 10x the typical one's
    varying, rare = std > floor, (std > 1e-6) & (std <= floor)
    assert int((~varying).sum()) >= 1  # digits have blank border pixels
    assert int(rare.sum()) >= 1  # ... and pixels inked in only a few training images
    assert X.mean(0).abs().max() < 1e-5
    torch.testing.assert_close(X.std(0)[varying], torch.ones(int(varying.sum())))
    assert X[:, std <= 1e-6].abs().max() == 0  # constant features are centred, not blown up
    expected_val = (raw_digits.X_val - mean) / std.clamp_min(floor)
    torch.testing.assert_close(Xv, expected_val)
    # a pixel blank in training but inked in validation stays on the scale of the rest
    # (divided by 1e-6 it reached 1.6e7)
    assert float(Xv.abs().max()) < 16 / floor + 1e-3
    assert Xv[:, varying].mean(0).abs().max() > 0.05  # not standardised with its own stats
    assert torch.equal(treated.train[1], raw_digits.y_train)
    assert exp.train[0] is raw_digits.X_train and float(exp.train[0].max()) == 16.0


def test_standardize_inputs_on_token_ids_is_a_prescription() -> None:
    ids = torch.randint(0, 5, (40, 6))
    exp = dd.Experiment(
        lambda: dd.models.transformer(6, 2, depth=1, width=8, heads=2, vocab_size=5),
        (ids, torch.randint(0, 2, (40,))),
    )
    with pytest.raises(Prescription, match="not floating point"):
        apply_remedies(exp, ["standardize_inputs"], Context(example=ids[:4]))


def test_class_weights_are_inverse_frequencies() -> None:
    split = dd.data.load("digits", imbalance=30.0)
    exp = experiment(split, sick_spec())
    treated = apply_remedies(exp, ["class_weights"], context(split))
    loss_fn = treated.loss_fn
    assert isinstance(loss_fn, nn.CrossEntropyLoss)
    counts = torch.bincount(split.y_train).float()
    assert counts.max() / counts.min() > 20
    weight = loss_fn.weight
    assert weight is not None
    # inversely proportional to the counts (sklearn's "balanced"): mean weight per sample 1
    torch.testing.assert_close(weight * counts, torch.full((10,), float(counts.mean())))
    assert float(weight[split.y_train].mean()) == pytest.approx(1.0)
    logits, y = torch.randn(32, 10), split.y_train[:32]
    per_sample = F.cross_entropy(logits, y, reduction="none")
    expected = (weight[y] * per_sample).sum() / weight[y].sum()
    torch.testing.assert_close(loss_fn(logits, y), expected)


def test_class_weights_cover_a_class_missing_from_the_training_labels(
    digits: dd.data.Split,
) -> None:
    keep = digits.y_train != 9
    exp = dd.Experiment(
        sick_spec(), (digits.X_train[keep], digits.y_train[keep]), digits.val, n_classes=10
    )
    treated = apply_remedies(exp, ["class_weights"], context(digits))
    weight = treated.loss_fn.weight
    assert weight.shape == (10,)
    assert treated.run(steps=5).steps == 5


def test_class_weights_need_class_indices_and_cross_entropy(digits: dd.data.Split) -> None:
    regression = dd.Experiment(lambda: nn.Linear(64, 1), (digits.X_train, digits.X_train[:, :1]))
    with pytest.raises(Prescription, match="targets are not class indices"):
        apply_remedies(regression, ["class_weights"], context(digits))
    nll = experiment(digits, sick_spec(), loss_fn=nn.MultiMarginLoss())
    with pytest.raises(Prescription, match="the loss is not cross-entropy"):
        apply_remedies(nll, ["class_weights"], context(digits))


def test_data_augmentation_jitters_flat_digits(digits: dd.data.Split) -> None:
    exp = experiment(digits, sick_spec())
    treated = apply_remedies(exp, ["data_augmentation"], context(digits))
    assert treated.augment is data_remedies.jitter_and_shift and exp.augment is None
    x = digits.X_train[:512]
    torch.manual_seed(0)
    a = treated.augment(x)
    torch.manual_seed(0)
    assert torch.equal(a, treated.augment(x))  # deterministic under the seed
    std = x.std(0)
    varying = std > 0
    noise = (a - x)[:, varying] / std[varying]
    assert float(noise.std()) == pytest.approx(data_remedies.AUGMENT_NOISE, rel=0.05)
    assert torch.equal(a[:, ~varying], x[:, ~varying])  # blank pixels stay blank
    runs = [treated.run(steps=15).loss for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0] != exp.run(steps=15).loss


def test_data_augmentation_shifts_images_by_at_most_one_pixel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(data_remedies, "AUGMENT_NOISE", 0.0)
    x = torch.arange(2 * 64, dtype=torch.float32).reshape(2, 1, 8, 8)
    seen = set()
    for seed in range(60):
        torch.manual_seed(seed)
        out = data_remedies.jitter_and_shift(x)
        shift = next(
            (dy, dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if torch.equal(out, torch.roll(x, (dy, dx), (2, 3)))
        )
        seen.add(shift)
    assert len(seen) == 9  # every one-pixel shift, and only those


def test_data_augmentation_refuses_token_ids_and_double_augmentation(
    digits: dd.data.Split,
) -> None:
    augmented = experiment(digits, sick_spec(), augment=lambda x: x)
    with pytest.raises(Prescription, match="already augments"):
        apply_remedies(augmented, ["data_augmentation"], context(digits))
    ids = dd.Experiment(lambda: nn.Embedding(5, 2), (torch.zeros(8, 3, dtype=torch.long),) * 2)
    with pytest.raises(Prescription, match="token ids"):
        apply_remedies(ids, ["data_augmentation"], Context(example=ids.train[0]))


def test_data_remedies_on_a_dataloader_are_prescriptions(digits: dd.data.Split) -> None:
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(*digits.train), batch_size=32
    )
    exp = dd.Experiment(sick_spec(), loader, digits.val)
    for name in ("standardize_inputs", "class_weights", "data_augmentation"):
        with pytest.raises(Prescription, match="the training data is a DataLoader"):
            apply_remedies(exp, [name], context(digits))
    # Tensors to train on but a loader to validate on: scaling only one would evaluate the
    # model on inputs unlike any it trained on.
    val_loader = dd.Experiment(sick_spec(), digits.train, loader)
    with pytest.raises(Prescription, match="the validation data is a DataLoader"):
        apply_remedies(val_loader, ["standardize_inputs"], context(digits))


# -- regularisation -------------------------------------------------------------------------


def test_dropout_after_every_activation(digits: dd.data.Split) -> None:
    exp = experiment(digits, sick_spec())
    model = apply_remedies(exp, ["dropout"], context(digits)).build()
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 3 and all(m.p == 0.2 for m in drops)
    for i in (1, 2, 3):
        act = model.get_submodule(f"act{i}")
        assert isinstance(act[0], nn.Sigmoid) and isinstance(act[1], nn.Dropout)
    already = experiment(digits, lambda: dd.models.mlp(64, 10, dropout=0.5))
    with pytest.raises(Prescription, match="already uses dropout"):
        apply_remedies(already, ["dropout"], context(digits))


def test_weight_decay_is_set_on_every_group(digits: dd.data.Split) -> None:
    exp = experiment(digits, sick_spec(), optimizer=sgd(0.05, momentum=0.9))
    opt = opt_of(apply_remedies(exp, ["weight_decay"], context(digits)))
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4]
    assert opt.param_groups[0]["lr"] == 0.05 and opt.param_groups[0]["momentum"] == 0.9
    assert opt_of(exp).param_groups[0]["weight_decay"] == 0


def test_early_stopping_patience_and_evaluation_grid(digits: dd.data.Split) -> None:
    exp = experiment(digits, sick_spec(), steps=200)
    treated = apply_remedies(exp, ["early_stopping"], context(digits))
    assert treated.early_stopping == 3 and treated.eval_every == 10
    no_val = dd.Experiment(sick_spec(), digits.train)
    with pytest.raises(Prescription, match="needs validation data"):
        apply_remedies(no_val, ["early_stopping"], context(digits))


# -- capacity -------------------------------------------------------------------------------


def test_capacity_doubles_or_halves_the_width_of_a_spec(digits: dd.data.Split) -> None:
    exp = experiment(digits, sick_spec())
    wider = apply_remedies(exp, ["more_capacity"], context(digits))
    narrower = apply_remedies(exp, ["less_capacity"], context(digits))
    assert wider.model.kwargs["width"] == 64 and narrower.model.kwargs["width"] == 16
    assert wider.build().fc2.weight.shape == (64, 64)
    assert narrower.build().fc2.weight.shape == (16, 16)
    assert sum(isinstance(m, nn.Linear) for m in wider.build().modules()) == 4  # depth kept
    assert wider.meta["changes"][-1]["code"] == "width = 64  # was 32"
    default = experiment(digits, dd.models.spec("mlp", in_features=64, n_classes=10))
    assert (
        apply_remedies(default, ["more_capacity"], context(digits)).build().fc1.out_features == 128
    )


def test_capacity_without_a_spec_widens_through_fx_and_without_room_is_a_prescription(
    digits: dd.data.Split,
) -> None:
    exp = experiment(digits, lambda: dd.models.mlp(64, 10))
    wider = apply_remedies(exp, ["more_capacity"], context(digits)).build()
    width = inspect.signature(dd.models.mlp).parameters["width"].default
    count = sum(p.numel() for p in dd.models.mlp(64, 10, width=2 * width).parameters())
    assert sum(p.numel() for p in wider.parameters()) == count  # as if built twice as wide
    tiny = experiment(digits, dd.models.spec("mlp", in_features=64, n_classes=10, width=4))
    with pytest.raises(Prescription, match="width 4 cannot shrink further"):
        apply_remedies(tiny, ["less_capacity"], context(digits))
    linear = experiment(digits, lambda: torch.nn.Linear(64, 10))
    with pytest.raises(Prescription, match="no hidden width can be halved automatically"):
        apply_remedies(linear, ["less_capacity"], context(digits))


# -- every remedy ---------------------------------------------------------------------------


FINE_TUNING = ("discriminative_lr", "freeze_pretrained")


def full_context(split: dd.data.Split) -> Context:
    return context(
        split,
        base_lr=0.1,
        grad_norms=np.linspace(0.5, 2.0, 30),
        update_ratio=1e-4,
        kinds={"diverging_loss"},
    )


@pytest.mark.parametrize("name", CONTRACT)
def test_remedy_leaves_the_input_alone_logs_code_and_builds_deterministically(
    raw_digits: dd.data.Split, name: str
) -> None:
    model = sick_spec()
    optimizer = sgd(0.1)
    # the fine-tuning remedies need to be told which layers are pretrained
    tuned = {"pretrained": ["fc1", "fc2"]} if name in FINE_TUNING else {}
    exp = experiment(raw_digits, model, optimizer=optimizer, meta={"owner": "me"}, **tuned)
    fields = dict(vars(exp))
    train, val = exp.train, exp.val
    treated = apply_remedies(exp, [name], full_context(raw_digits))
    # the input Experiment is untouched
    assert vars(exp) == fields
    assert exp.meta == {"owner": "me"} and exp.model is model and exp.optimizer is optimizer
    assert exp.train[0] is train[0] and exp.val[0] is val[0]
    assert float(train[0].max()) == 16.0
    # the change is logged as a line of code, and the rest of meta kept
    assert treated.meta["owner"] == "me"
    assert [c["remedy"] for c in treated.meta["changes"]] == [name]
    assert treated.meta["changes"][0]["code"].strip()
    # fresh builds from the same seed are equal
    a, b = treated.build().state_dict(), treated.build().state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and the treated experiment trains the same way twice
    assert treated.run(steps=3).loss == treated.run(steps=3).loss


def test_composition_follows_order_and_logs_each_change(digits: dd.data.Split) -> None:
    exp = experiment(digits, sick_spec())
    names = ["adam", "he_init", "residual", "relu_activation", "more_capacity"]
    treated = apply_remedies(exp, names, full_context(digits))
    assert [c["remedy"] for c in treated.meta["changes"]] == sorted(names, key=ORDER.index)
    model = treated.build()
    assert count(model, Residual) == 3 and count(model, nn.ReLU) == 3  # width 64: fc1 too
    assert count(model, nn.Sigmoid) == 0 and model.res_fc1.body.fc1.out_features == 64
    fc2 = model.get_submodule("res_fc2.body.fc2")
    assert abs(fc2.weight.std().item() / math.sqrt(2 / 64) - 1) < 0.05  # He after the rewrite
    assert type(opt_of(treated, model)) is torch.optim.Adam

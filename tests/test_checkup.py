"""checkup: one forward/backward pass at init that changes nothing and names what it sees."""

from __future__ import annotations

import json
import math
import random
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import deepdoctor as dd
from deepdoctor import data, models
from deepdoctor.checkup import (
    DEPTH_SCALE_FACTOR,
    Checkup,
    checkup,
    checkup_experiment,
    fit_depth,
)
from deepdoctor.cli import main
from deepdoctor.findings import REMEDIES


@pytest.fixture(scope="module")
def digits() -> data.Split:
    return data.load("digits")


@pytest.fixture(scope="module")
def batch(digits: data.Split) -> tuple[torch.Tensor, torch.Tensor]:
    return digits.X_train[:64], digits.y_train[:64]


def problems(chk: Checkup) -> dict[str, str]:
    return {f.kind: f.severity for f in chk.findings if f.is_problem}


def seeded(build, seed: int = 0):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    return build()


# -- it changes nothing --------------------------------------------------------------------


def test_checkup_leaves_weights_grads_modes_and_rng_untouched(batch) -> None:  # type: ignore[no-untyped-def]
    model = seeded(lambda: models.mlp(64, 10, depth=3, width=32, norm="batch", dropout=0.3))
    model.eval()
    model.drop2.train()  # a mixed state, to see that every submodule keeps its own mode
    model.fc1.weight.grad = torch.full_like(model.fc1.weight, 0.5)  # an earlier .grad
    old_grad = model.fc1.weight.grad
    weights = {k: v.clone() for k, v in model.state_dict().items()}  # buffers included
    modes = {name: m.training for name, m in model.named_modules()}
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    rng = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()

    chk = checkup(model, batch)

    assert chk.layers and chk.depth["current_depth"] == 4  # it did measure something
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert model.fc1.weight.grad is old_grad and torch.equal(
        old_grad, torch.full_like(old_grad, 0.5)
    )
    assert all(p.grad is None for n, p in model.named_parameters() if n != "fc1.weight")
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert np.array_equal(np.random.get_state()[1], rng[1])
    assert random.getstate() == rng[2]


def test_eval_mode_model_is_checked_as_it_trains_and_restored(batch) -> None:  # type: ignore[no-untyped-def]
    model = seeded(lambda: models.mlp(64, 10, depth=2, width=32, norm="batch"))
    in_train = checkup(model, batch)
    model.eval()
    in_eval = checkup(model, batch)
    assert not any(m.training for m in model.modules())
    # batch statistics, as in training: the normalised outputs have mean 0 and std 1
    assert in_eval.layers[1].name == "norm1"
    assert in_eval.layers[1].out_mean == pytest.approx(0.0, abs=1e-5)
    assert in_eval.to_dict()["layers"] == in_train.to_dict()["layers"]


def test_checkup_is_deterministic_with_dropout(batch) -> None:  # type: ignore[no-untyped-def]
    model = seeded(lambda: models.mlp(64, 10, depth=2, width=32, dropout=0.5))
    assert checkup(model, batch).to_dict() == checkup(model, batch).to_dict()
    assert checkup(model, batch, seed=1).to_dict() != checkup(model, batch).to_dict()


# -- what it measures ------------------------------------------------------------------------


def test_to_dict_has_the_contract_layout(batch) -> None:  # type: ignore[no-untyped-def]
    chk = checkup(seeded(lambda: models.mlp(64, 10, depth=2, width=32)), batch, n_samples=500)
    d = json.loads(json.dumps(chk.to_dict(), allow_nan=False))
    assert set(d) == {
        "schema",
        "schema_version",
        "healthy",
        "findings",
        "layers",
        "input",
        "loss",
        "depth",
        "complexity",
        "coverage",
    }
    assert (d["schema"], d["schema_version"]) == ("deepdoctor.checkup", 1)
    assert [row["name"] for row in d["layers"]] == ["fc1", "fc2", "out"]
    assert set(d["layers"][0]) == {
        "name",
        "type",
        "out_mean",
        "out_std",
        "grad_norm",
        "grad_to_weight",
        "dead_frac",
        "saturated_frac",
        "weight_layer",
    }
    assert [row["weight_layer"] for row in d["layers"]] == [True, True, True]
    assert set(d["input"]) == {
        "mean",
        "std",
        "feature_mean_absmax",
        "feature_std_max",
        "feature_std_min",
    }
    assert set(d["loss"]) == {"value", "expected", "n_classes", "logit_std"}
    assert set(d["depth"]) == {
        "grad_rate_per_layer",
        "trainable_depth",
        "current_depth",
        "first_to_last_ratio",
    }
    assert set(d["complexity"]) == {"layers", "total", "params_per_sample"}
    assert d["layers"][0]["saturated_frac"] is None  # ReLU: does not apply -> null
    assert d["complexity"]["params_per_sample"] == pytest.approx(
        models.n_parameters(models.mlp(64, 10, depth=2, width=32)) / 500
    )


def test_measurements_match_direct_computation(batch) -> None:  # type: ignore[no-untyped-def]
    X, y = batch
    model = seeded(lambda: models.mlp(64, 10, depth=2, width=16))
    chk = checkup(model, batch)
    out = model(X)
    loss = nn.functional.cross_entropy(out, y)
    grads = torch.autograd.grad(loss, [model.fc1.weight, model.out.weight])
    rows = {row.name: row for row in chk.layers}
    with torch.no_grad():
        assert chk.loss["value"] == pytest.approx(float(loss), rel=1e-5)
        assert chk.loss["expected"] == pytest.approx(math.log(10))
        assert chk.loss["n_classes"] == 10
        assert chk.loss["logit_std"] == pytest.approx(float(out.std()), rel=1e-5)
        assert rows["fc1"].grad_norm == pytest.approx(float(grads[0].norm()), rel=1e-5)
        # the detectors' relative gradient: over the weight norm of all the layer's
        # trainable parameters, bias included (the Trace's weight_norm)
        weight_norm = torch.cat([model.out.weight.reshape(-1), model.out.bias]).norm()
        assert rows["out"].grad_to_weight == pytest.approx(
            float(grads[1].norm() / weight_norm), rel=1e-5
        )
        assert rows["fc1"].out_std == pytest.approx(float(model.fc1(X).std()), rel=1e-5)
        hidden = torch.relu(model.fc1(X))
        assert rows["fc1"].dead_frac == pytest.approx(float((hidden.amax(0) <= 0).float().mean()))
        assert chk.depth["first_to_last_ratio"] == pytest.approx(
            float(grads[0].norm() / grads[1].norm()), rel=1e-5
        )
    assert chk.input["mean"] == pytest.approx(float(X.mean()), abs=1e-6)
    assert chk.input["feature_std_max"] == pytest.approx(float(X.std(0).max()), rel=1e-5)


def test_dataloader_gives_the_same_result_as_its_first_batch(batch) -> None:  # type: ignore[no-untyped-def]
    X, y = batch
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=32)
    model = seeded(lambda: models.mlp(64, 10, depth=2, width=16))
    assert checkup(model, loader).to_dict() == checkup(model, (X[:32], y[:32])).to_dict()


def test_fit_depth_recovers_a_geometric_rate() -> None:
    # the gradient grows x10 per layer towards the output: a rate of 0.1 towards the input
    depth = fit_depth([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    assert depth["grad_rate_per_layer"] == pytest.approx(0.1)
    # 10^6 is reached over 6 intervals, i.e. 7 weight layers
    assert depth["trainable_depth"] == pytest.approx(1 + math.log10(DEPTH_SCALE_FACTOR))
    assert depth["first_to_last_ratio"] == pytest.approx(1e-4)
    flat = fit_depth([1.0, 1.3, 0.8, 1.1, 0.9, 1.2])  # scatter, no trend
    assert flat["trainable_depth"] == math.inf
    assert math.isnan(fit_depth([1.0, 2.0])["grad_rate_per_layer"])  # too few to fit


# -- healthy setups come out healthy ---------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: models.mlp(64, 10, depth=3, width=128, init="he"),
        lambda: models.mlp(64, 10, depth=6, width=64, init="he", norm="batch"),
        lambda: models.mlp(64, 10, depth=2, width=64, activation="sigmoid"),
        lambda: models.mlp(64, 10, depth=3, width=64, activation="sigmoid", init="xavier"),
        lambda: models.mlp(64, 10, depth=3, width=64, activation="tanh", init="xavier"),
    ],
    ids=["relu-he", "relu-he-bn", "sigmoid-2", "sigmoid-3-xavier", "tanh-3-xavier"],
)
def test_healthy_mlps_are_healthy(build, batch) -> None:  # type: ignore[no-untyped-def]
    for seed in range(2):
        chk = checkup(seeded(build, seed), batch)
        assert chk.healthy, chk.findings


def test_healthy_sequence_models_are_healthy() -> None:
    split = data.load("mnist1d")
    X, y = split.X_train[:64], split.y_train[:64]
    for build in (
        lambda: models.transformer(40, 10, depth=2, width=32, heads=4),
        lambda: models.rnn(1, 10, cell="lstm", width=32),
    ):
        chk = checkup(seeded(build), (X, y))
        assert chk.healthy, chk.findings


# -- sick setups are named ----------------------------------------------------------------------


def test_deep_sigmoid_net_vanishes_beyond_its_trainable_depth(batch) -> None:  # type: ignore[no-untyped-def]
    chk = checkup(
        seeded(lambda: models.mlp(64, 10, depth=30, width=32, activation="sigmoid")), batch
    )
    assert problems(chk) == {"vanishing_gradients": "warning"}
    (finding,) = chk.problems
    assert finding.evidence["severe"] and finding.evidence["phase"] == "initialisation"
    assert chk.depth["first_to_last_ratio"] < 1e-20
    assert chk.depth["grad_rate_per_layer"] < 0.3  # sigmoid's slope is at most 1/4
    assert chk.depth["trainable_depth"] < chk.depth["current_depth"] == 31
    assert "barely learn" in chk.depth_summary() and "beyond it" in chk.depth_summary()


def test_tiny_weights_vanish_even_where_the_ratio_looks_flat(digits) -> None:  # type: ignore[no-untyped-def]
    # N(0, 0.05^2) weights shrink the signal forward and the gradient backward; the weight
    # gradient (their product) is flat across layers and tiny everywhere.
    model = seeded(
        lambda: models.mlp(64, 10, depth=20, width=64, activation="tanh", init="normal:0.05")
    )
    chk = checkup(model, (digits.X_train[:64], digits.y_train[:64]))
    (finding,) = [f for f in chk.findings if f.kind == "vanishing_gradients"]
    assert 0.1 < chk.depth["first_to_last_ratio"] < 10
    assert finding.evidence["median_relative_grad"] < 1e-6


def test_chaotic_tanh_net_explodes() -> None:
    split = data.load("mnist1d")
    model = seeded(
        lambda: models.mlp(40, 10, depth=20, width=64, activation="tanh", init="normal:0.3")
    )
    chk = checkup(model, (split.X_train[:64], split.y_train[:64]))
    assert "exploding_gradients" in problems(chk)
    assert chk.depth["grad_rate_per_layer"] > 1.1


def test_negative_biases_kill_relu_units(batch) -> None:  # type: ignore[no-untyped-def]
    model = seeded(lambda: models.mlp(64, 10, depth=3, width=64, init="he"))
    with torch.no_grad():
        for layer in (model.fc1, model.fc2, model.fc3):
            layer.bias.fill_(-3.0)
    chk = checkup(model, batch)
    (finding,) = [f for f in chk.findings if f.kind == "dead_units"]
    assert finding.severity == "warning" and finding.evidence["dead_frac"] >= 0.9
    assert "he_init" in finding.remedies


def test_large_tanh_weights_saturate_and_miscalibrate_the_loss(batch) -> None:  # type: ignore[no-untyped-def]
    chk = checkup(
        seeded(lambda: models.mlp(64, 10, depth=4, width=64, activation="tanh", init="normal:1.0")),
        batch,
    )
    found = problems(chk)
    assert found["saturated_units"] == "warning"
    assert "bad_init_loss" in found
    assert chk.loss["value"] - chk.loss["expected"] > 4


def test_raw_inputs_are_unscaled_and_standardizing_is_the_first_remedy() -> None:
    raw = data.load("digits", standardize=False)
    chk = checkup(
        seeded(lambda: models.mlp(64, 10, depth=2, width=64, activation="sigmoid")),
        (raw.X_train[:64], raw.y_train[:64]),
    )
    assert "unscaled_inputs" in problems(chk)
    unscaled = next(f for f in chk.findings if f.kind == "unscaled_inputs")
    assert unscaled.remedies[0] == "standardize_inputs"
    assert chk.input["feature_mean_absmax"] > 5


def test_imbalanced_batch_is_flagged_and_balanced_is_not(digits) -> None:  # type: ignore[no-untyped-def]
    # 256 examples: enough per class for the balance to be judged (detectors.data.MIN_PER_CLASS)
    X, y = digits.X_train[:256], digits.y_train[:256]
    skewed = torch.where(torch.arange(256) < 192, torch.zeros_like(y), y)  # 75%+ class 0
    model = seeded(lambda: models.mlp(64, 10, depth=2, width=32, init="he"))
    (finding,) = [f for f in checkup(model, (X, skewed)).findings if f.kind == "class_imbalance"]
    assert finding.evidence["majority_share"] >= 0.75
    assert "class_imbalance" not in problems(checkup(model, (X, y)))
    # a batch of 64 over 10 classes is too few to judge the balance by
    assert "class_imbalance" not in problems(checkup(model, (X[:64], skewed[:64])))


def test_nonfinite_activations_are_located(batch) -> None:  # type: ignore[no-untyped-def]
    class Log(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log(x)

    model = seeded(
        lambda: nn.Sequential(
            OrderedDict(
                [
                    ("log", Log()),
                    ("fc", nn.Linear(64, 16)),
                    ("act", nn.ReLU()),
                    ("out", nn.Linear(16, 10)),
                ]
            )
        )
    )
    chk = checkup(model, batch)
    assert problems(chk) == {"nonfinite": "critical"}
    assert chk.findings[0].layers == ["log"]  # the module whose output first went NaN
    assert chk.to_dict()["loss"]["value"] is None  # NaN -> null


def test_every_finding_carries_evidence_and_known_remedies(batch) -> None:  # type: ignore[no-untyped-def]
    raw = data.load("digits", standardize=False)
    chk = checkup(
        seeded(lambda: models.mlp(64, 10, depth=8, width=64, activation="tanh", init="normal:1.0")),
        (raw.X_train[:64], raw.y_train[:64]),
        n_samples=10,
    )
    assert len(chk.findings) >= 4
    for f in chk.findings:
        assert f.evidence and f.remedies and set(f.remedies) <= set(REMEDIES)
        assert any(k.startswith("threshold") for k in f.evidence)


def test_regression_loss_is_compared_with_predicting_zero() -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 8, generator=g)
    y = torch.randn(64, generator=g) * 0.1
    model = seeded(lambda: models.mlp(8, 1, depth=2, width=32, init="normal:1.0"))
    chk = checkup(model, (X, y))
    assert chk.loss["n_classes"] is None
    assert chk.loss["expected"] == pytest.approx(float((y**2).mean()))
    assert problems(chk)["bad_init_loss"] == "warning"


# -- bad input -----------------------------------------------------------------------------------


def test_batch_that_does_not_fit_names_the_layer_and_shapes() -> None:
    model = models.mlp(64, 10, depth=2, width=32)
    with pytest.raises(
        ValueError,
        match=r"layer 'fc1' \(Linear\) on input of shape "
        r"\(8, 63\).*expects 64 features",
    ):
        checkup(model, (torch.zeros(8, 63), torch.zeros(8, dtype=torch.long)))
    with pytest.raises(ValueError, match="the last layer needs at least 12 outputs"):
        checkup(model, (torch.zeros(8, 64), torch.full((8,), 11)))


def test_empty_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="batch is empty"):
        checkup(models.mlp(4, 2), (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)))
    empty = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.zeros(0, 4), torch.zeros(0))
    )
    with pytest.raises(ValueError, match="yielded no batches"):
        checkup(models.mlp(4, 2), empty)
    with pytest.raises(TypeError, match=r"batch must be a tuple \(X, y\)"):
        checkup(models.mlp(4, 2), torch.zeros(3, 4))


def test_batch_of_one_with_batch_norm_is_explained(batch) -> None:  # type: ignore[no-untyped-def]
    X, y = batch
    model = models.mlp(64, 10, depth=2, width=16, norm="batch")
    with pytest.raises(ValueError, match="batch norm layer 'norm1'.*batch of one example"):
        checkup(model, (X[:1], y[:1]))
    one = checkup(models.mlp(64, 10, depth=2, width=16), (X[:1], y[:1]))  # fine without BN
    assert one.input["std"] is None or math.isnan(one.input["std"])  # one example: no spread
    assert "class_imbalance" not in problems(one)  # too few examples to judge


def test_model_on_another_device_is_refused() -> None:
    model = models.mlp(4, 2).to("meta")
    with pytest.raises(
        ValueError, match="parameters are on meta but the batch's inputs are on cpu"
    ):
        checkup(model, (torch.zeros(3, 4), torch.zeros(3, dtype=torch.long)))


def test_not_a_model_or_frozen_model_is_refused(batch) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        checkup("mlp", batch)  # type: ignore[arg-type]
    frozen = models.mlp(64, 10).requires_grad_(False)
    with pytest.raises(ValueError, match="frozen"):
        checkup(frozen, batch)


# -- experiments and the command line ---------------------------------------------------------


def test_checkup_experiment_uses_the_first_training_batch() -> None:
    exp = dd.Experiment(
        lambda: models.mlp(64, 10, depth=2, width=16), data.load("digits").train, batch_size=32
    )
    chk = checkup_experiment(exp)
    assert chk.meta["batch_size"] == 32 and chk.meta["n_samples"] == 1437
    assert Checkup.from_experiment(exp).to_dict() == chk.to_dict()


def test_cli_checkup_exit_codes_and_json(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "chk.json"
    assert main(["checkup", "preset:healthy-mlp-digits", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["schema"] == "deepdoctor.checkup" and d["healthy"] is True
    report = tmp_path / "report"
    assert main(["checkup", "preset:sigmoid-mlp50-digits", "--out", str(report)]) == 1
    text = capsys.readouterr().out
    assert "vanishing_gradients" in text and "trainable depth: about" in text
    assert (report / "report.html").stat().st_size > 0
    saved = json.loads((report / "checkup.json").read_text())
    assert saved["depth"]["current_depth"] == 51 and not saved["healthy"]
    assert main(["checkup", "no-such-target"]) == 2
    assert main(["checkup", "preset:healthy-mlp-digits", "--seed", "-1"]) == 2


def test_cli_complexity_prints_per_layer_table(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["complexity", "preset:healthy-mlp-digits"]) == 0
    text = capsys.readouterr().out
    assert "fc1" in text and "8,320" in text and "42,634" in text  # 64*128+128; total


# -- the trainable depth, against a direct measurement ---------------------------------------

# The predicted depth is checked against the first/last gradient ratio measured in a net
# built at that depth: within one decade of DEPTH_SCALE_FACTOR. One decade, because single
# layers' gradient norms on one batch scatter by ~0.3 decades around the fitted line, and
# the first and last layers (64 inputs, 10 classes, unlike the hidden 64x64) shift the
# measured ratio by a constant; at the depths predicted here the errors seen are 0.1-0.5.
DEPTH_TOLERANCE_DECADES = 1.0
PROBE_DEPTH = 16  # the rate of ReLU / tanh nets with torch's default init settles by ~16


@pytest.mark.parametrize(
    "activation,init",
    [
        ("sigmoid", "default"),
        ("sigmoid", "xavier"),
        ("relu", "default"),
        ("tanh", "default"),
    ],
)
def test_trainable_depth_predicts_the_measured_ratio(activation, init, digits) -> None:  # type: ignore[no-untyped-def]
    batch = (digits.X_train[:128], digits.y_train[:128])
    probe = checkup(
        seeded(
            lambda: models.mlp(
                64, 10, depth=PROBE_DEPTH, width=64, activation=activation, init=init
            )
        ),
        batch,
    )
    predicted = probe.depth["trainable_depth"]
    assert math.isfinite(predicted) and predicted > 5
    layers = round(predicted)  # weight layers: hidden layers + the output layer
    net = seeded(
        lambda: models.mlp(64, 10, depth=layers - 1, width=64, activation=activation, init=init),
        seed=100,
    )
    measured = checkup(net, batch).depth["first_to_last_ratio"]
    assert abs(math.log10(measured) + math.log10(DEPTH_SCALE_FACTOR)) <= DEPTH_TOLERANCE_DECADES


def test_edge_of_chaos_has_no_trainable_depth_limit(digits) -> None:  # type: ignore[no-untyped-def]
    # tanh with Xavier init sits near the edge of chaos: no geometric trend to extrapolate,
    # and indeed ten times deeper the gradient has changed by far less than 10^6.
    batch = (digits.X_train[:128], digits.y_train[:128])

    def build(depth: int) -> nn.Module:
        return models.mlp(64, 10, depth=depth, width=64, activation="tanh", init="xavier")

    assert checkup(seeded(lambda: build(PROBE_DEPTH)), batch).depth["trainable_depth"] == math.inf
    deep = checkup(seeded(lambda: build(10 * PROBE_DEPTH)), batch).depth
    assert abs(math.log10(deep["first_to_last_ratio"])) < 2


def test_functional_relus_with_negative_biases_are_dead_from_the_start(batch) -> None:  # type: ignore[no-untyped-def]
    """A user's trial: ten layers whose ReLUs are F.relu calls and whose biases are -3. Nine
    layers output exactly 0; the checkup used to call it healthy."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hidden = nn.ModuleList(nn.Linear(64, 64) for _ in range(9))
            self.out = nn.Linear(64, 10)
            with torch.no_grad():
                for layer in self.hidden:
                    layer.bias.fill_(-3.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.hidden:
                x = nn.functional.relu(layer(x))
            return self.out(x)

    chk = checkup(seeded(Net), batch)
    (finding,) = [f for f in chk.findings if f.kind == "dead_units"]
    assert finding.is_problem and finding.evidence["dead_frac"] == 1.0
    assert len(finding.layers) >= 8  # what hidden.1 ... out receive: all zeros

"""The Probe: numbers checked by hand, sampling, invariance, plain loops, hooks removed."""

from __future__ import annotations

import copy
import math
from array import array
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim import optimizer as optimizer_module

from deepdoctor import models, training
from deepdoctor.probe import DEFAULT_EVERY, Probe
from deepdoctor.trace import Trace

Data = tuple[torch.Tensor, torch.Tensor]

# -- a network small enough to differentiate by hand --------------------------------------

W1 = np.array([[0.5, -1.0], [2.0, 0.3]])
B1 = np.array([0.1, -0.2])
W2 = np.array([[1.5, -0.7]])
B2 = np.array([0.05])
X = np.array([[1.0, 2.0], [-0.5, 0.4], [3.0, -1.0]])
Y = np.array([[0.7], [-0.2], [1.1]])
LR = 0.1


def _tiny_net() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.Linear(2, 1))
    with torch.no_grad():
        for p, v in zip(net.parameters(), (W1, B1, W2, B2), strict=True):
            p.copy_(torch.tensor(v))
    return net


def _hand_gradients() -> dict[str, np.ndarray]:
    """Backpropagation written out in float64 for L = mean((W2 s(W1 x + b1) + b2 - y)^2)."""
    h = X @ W1.T + B1
    a = 1 / (1 + np.exp(-h))
    o = a @ W2.T + B2
    d_o = 2 * (o - Y) / len(X)
    d_h = (d_o @ W2) * a * (1 - a)
    return {"W1": d_h.T @ X, "B1": d_h.sum(0), "W2": d_o.T @ a, "B2": d_o.sum(0)}


def _one_sgd_step(probe_first: bool) -> Trace:
    net = _tiny_net()
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    with Probe(net, every=1) as probe:
        loss = nn.functional.mse_loss(
            net(torch.tensor(X, dtype=torch.float32)), torch.tensor(Y, dtype=torch.float32)
        )
        opt.zero_grad()
        loss.backward()
        if probe_first:
            probe.record_loss(loss)
        opt.step()
        if not probe_first:
            probe.record_loss(loss)
    return probe.trace


def test_gradient_norms_match_a_hand_computation() -> None:
    g = _hand_gradients()
    trace = _one_sgd_step(probe_first=False)
    assert trace.layers == ["0", "2"]
    weight = trace.layer.array("grad_norm_weight")[0]
    bias = trace.layer.array("grad_norm_bias")[0]
    expected_weight = [np.linalg.norm(g["W1"]), np.linalg.norm(g["W2"])]
    expected_bias = [np.linalg.norm(g["B1"]), np.linalg.norm(g["B2"])]
    # float32 forward/backward against float64 by hand
    np.testing.assert_allclose(weight, expected_weight, rtol=1e-5)
    np.testing.assert_allclose(bias, expected_bias, rtol=1e-5)
    assert trace.learning_speed()[0].tolist() == bias.tolist()
    total = math.sqrt(sum(float(np.sum(v**2)) for v in g.values()))
    assert trace.steps.rows["grad_norm_total"][0][0] == pytest.approx(total, rel=1e-5)


def test_weight_norm_and_update_ratio_match_a_hand_computation_for_sgd() -> None:
    g = _hand_gradients()
    trace = _one_sgd_step(probe_first=True)
    # the weight norm is read before the update and covers weight and bias
    w_norm = [math.sqrt(np.sum(W1**2) + np.sum(B1**2)), math.sqrt(np.sum(W2**2) + np.sum(B2**2))]
    np.testing.assert_allclose(trace.layer.array("weight_norm")[0], w_norm, rtol=1e-6)
    # SGD moves the weights by lr * gradient: ||lr g|| / ||w||
    ratio = [
        LR * math.sqrt(np.sum(g["W1"] ** 2) + np.sum(g["B1"] ** 2)) / w_norm[0],
        LR * math.sqrt(np.sum(g["W2"] ** 2) + np.sum(g["B2"] ** 2)) / w_norm[1],
    ]
    np.testing.assert_allclose(trace.updates.array("update_ratio")[0], ratio, rtol=1e-4)
    assert trace.steps.rows["lr"][0][0] == pytest.approx(LR)


@pytest.mark.parametrize("probe_first", [True, False], ids=["before_step", "after_step"])
def test_record_loss_before_or_after_the_step(probe_first: bool) -> None:
    h = X @ W1.T + B1
    o = (1 / (1 + np.exp(-h))) @ W2.T + B2
    expected = float(np.mean((o - Y) ** 2))
    trace = _one_sgd_step(probe_first)
    assert trace.n_steps == 1
    assert trace.loss()[0] == pytest.approx(expected, rel=1e-6)


def test_vanishing_gradients_do_not_underflow_to_zero() -> None:
    # Entries of 1e-30: their float32 squares underflow, so a float32 norm would read 0.
    net = nn.Linear(4, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with Probe(net) as probe:
        (net(torch.ones(2, 4)).sum() * 1e-30).backward()
        grad = net.weight.grad.detach().double().norm().item()
        opt.step()
    assert grad > 0
    assert probe.trace.layer.rows["grad_norm_weight"][0][0] == pytest.approx(grad, rel=1e-6)
    assert probe.trace.layer.rows["grad_norm_bias"][0][0] == pytest.approx(2e-30, rel=1e-6)


# -- activation statistics -----------------------------------------------------------------


def _probe_one_forward(net: nn.Module, x: torch.Tensor) -> Trace:
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    with Probe(net, every=1) as probe:
        net(x).sum().backward()
        opt.step()
    return probe.trace


def test_dead_fraction_of_a_relu_layer_with_known_dead_units() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        net[0].weight[:3] = 0.0  # units 0-2 get -10 whatever the input: dead
        net[0].bias[:3] = -10.0
        net[0].weight[3:] = 0.1
        net[0].bias[3:] = 10.0  # units 3-5 are positive for every input: alive
    trace = _probe_one_forward(net, torch.randn(16, 4))
    assert trace.act_layers == ["1"] and trace.act_kinds == {"1": "relu"}
    assert trace.act_sources == {"1": "0"}
    assert trace.acts.rows["dead_frac"][0] == [0.5]
    assert math.isnan(trace.acts.rows["saturated_frac"][0][0])  # does not apply to ReLU


def test_dead_units_are_channels_after_a_convolution_and_its_batch_norm() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 2),
    )
    with torch.no_grad():
        net[1].weight[:2] = 0.0  # channels 0 and 1 leave the norm as -1: dead after ReLU
        net[1].bias[:2] = -1.0
    trace = _probe_one_forward(net, torch.randn(5, 1, 6, 6))
    assert trace.act_sources == {"2": "1"}
    # 2 of 4 channels; counted over the last axis (width 6) it would read 0
    assert trace.acts.rows["dead_frac"][0] == [0.5]


def test_dead_channels_of_a_plain_convolution() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 2))
    with torch.no_grad():
        net[0].weight[0] = 0.0
        net[0].bias[0] = -1.0
    trace = _probe_one_forward(net, torch.randn(8, 2, 8))
    assert trace.acts.rows["dead_frac"][0] == [0.25]


def test_saturated_fraction_of_sigmoid_and_tanh() -> None:
    net = nn.Sequential(nn.Linear(1, 4), nn.Sigmoid(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    with torch.no_grad():
        # sigmoid pre-activations 50, -50, 0, 4: two are saturated (|h| > 4.6), 0 and 4 not
        net[0].weight.zero_()
        net[0].bias.copy_(torch.tensor([50.0, -50.0, 0.0, 4.0]))
        # tanh pre-activations 2.5, -2.5, 2.0, 0: |tanh| 0.987, 0.987 > 0.98 saturated;
        # tanh(2) = 0.964 is not
        net[2].weight.zero_()
        net[2].bias.copy_(torch.tensor([2.5, -2.5, 2.0, 0.0]))
    trace = _probe_one_forward(net, torch.randn(10, 1))
    assert trace.act_layers == ["1", "3"]
    assert trace.acts.rows["saturated_frac"][0] == [0.5, 0.5]
    assert all(math.isnan(v) for v in trace.acts.rows["dead_frac"][0])
    mean = trace.acts.rows["act_mean"][0]
    expected = 1 / (1 + math.exp(-4))
    assert mean[0] == pytest.approx((1 + 0 + 0.5 + expected) / 4, rel=1e-6)


def test_outputs_and_inputs_are_summarised() -> None:
    torch.manual_seed(0)
    x = torch.randn(32, 4) * 3 + 1
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    trace = _probe_one_forward(net, x)
    with torch.no_grad():
        h = net[0](x)
    assert trace.outputs.rows["out_mean"][0][0] == pytest.approx(float(h.mean()), rel=1e-5)
    assert trace.outputs.rows["out_std"][0][0] == pytest.approx(float(h.std()), rel=1e-5)
    assert trace.inputs.rows["mean"][0][0] == pytest.approx(float(x.mean()), rel=1e-5)
    assert trace.inputs.rows["feature_std_max"][0][0] == pytest.approx(
        float(x.std(0).max()), rel=1e-5
    )


# -- sampling -------------------------------------------------------------------------------


@pytest.mark.parametrize("every,sampled", [(1, list(range(10))), (4, [0, 4, 8])])
def test_costly_statistics_are_sampled_every_k_steps(
    blobs: Data, every: int, sampled: list[int]
) -> None:
    torch.manual_seed(0)
    model = models.mlp(10, 3, depth=2, width=8)
    with Probe(model, every=every) as probe:
        training.train(model, blobs, steps=10, probe=probe)
    t = probe.trace
    assert t.layer.steps == list(range(10)) and t.steps.steps == list(range(10))
    for table in (t.acts, t.outputs, t.updates, t.inputs):
        assert table.steps == sampled
    assert t.facts.every == every


def test_the_default_sampling_is_every_16th_step_as_documented() -> None:
    assert DEFAULT_EVERY == 16
    assert Probe(nn.Linear(2, 2)).every == 16


# -- the probe never changes training -------------------------------------------------------


def _train_with(blobs: Data, every: int | None) -> nn.Module:
    torch.manual_seed(3)
    model = models.mlp(10, 3, depth=3, width=16, norm="batch", dropout=0.1)
    if every is None:
        training.train(model, blobs, steps=40, batch_size=32, seed=5)
        return model
    with Probe(model, every=every) as probe:
        training.train(model, blobs, steps=40, batch_size=32, seed=5, probe=probe)
    assert probe.trace.n_steps == 40
    return model


def test_the_probe_never_changes_training(blobs: Data) -> None:
    plain = _train_with(blobs, None)
    for every in (1, DEFAULT_EVERY):
        probed = _train_with(blobs, every)
        state, ref = probed.state_dict(), plain.state_dict()  # running stats included
        assert all(torch.equal(state[k], ref[k]) for k in ref), f"every={every}"


def _user_loop(model: nn.Module, blobs: Data, probe: Probe | None) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    X, y = blobs
    losses = []
    for step in range(12):
        xb, yb = X[step * 16 : (step + 1) * 16], y[step * 16 : (step + 1) * 16]
        loss = nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if probe is not None:
            probe.record_loss(loss)
        losses.append(loss.item())
    return losses


def test_in_a_plain_user_loop_the_probe_sees_every_step_and_changes_nothing(blobs: Data) -> None:
    torch.manual_seed(0)
    plain = models.mlp(10, 3, depth=2, width=8, activation="tanh")
    probed = copy.deepcopy(plain)
    _user_loop(plain, blobs, None)
    with Probe(probed, every=1) as probe:  # global optimizer hooks: no optimizer passed
        losses = _user_loop(probed, blobs, probe)
    assert all(
        torch.equal(a, b) for a, b in zip(plain.parameters(), probed.parameters(), strict=True)
    )
    assert probe.trace.n_steps == 12
    assert probe.trace.loss().tolist() == losses


def test_an_optimizer_of_another_model_is_ignored() -> None:
    model, other = nn.Linear(3, 1), nn.Linear(3, 1)
    other_opt = torch.optim.SGD(other.parameters(), lr=0.1)
    with Probe(model) as probe:
        other(torch.ones(2, 3)).sum().backward()
        other_opt.step()
    assert probe.trace.n_steps == 0


def test_with_an_explicit_optimizer(blobs: Data) -> None:
    torch.manual_seed(0)
    model = models.mlp(10, 3, depth=1, width=8)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    with Probe(model, optimizer=opt) as probe:
        history = training.train(model, blobs, steps=6, optimizer=opt, probe=probe)
    assert probe.trace.n_steps == 6
    assert probe.trace.loss().tolist() == history.loss
    assert probe.trace.evals.steps == [e["step"] for e in history.evals]
    assert probe.trace.eval_metric("train_loss")[1].tolist() == history.metric("train_loss")


def test_end_step_closes_a_step_of_a_hand_written_update() -> None:
    net = _tiny_net()
    g = _hand_gradients()
    with Probe(net, every=1) as probe:
        for _ in range(3):
            loss = nn.functional.mse_loss(
                net(torch.tensor(X, dtype=torch.float32)), torch.tensor(Y, dtype=torch.float32)
            )
            net.zero_grad()
            loss.backward()
            with torch.no_grad():
                for p in net.parameters():
                    p -= LR * p.grad
            probe.record_loss(loss)
            probe.end_step()
    assert probe.trace.n_steps == 3
    first = probe.trace.layer.array("grad_norm_weight")[0]
    np.testing.assert_allclose(first, [np.linalg.norm(g["W1"]), np.linalg.norm(g["W2"])], rtol=1e-5)
    assert np.all(np.isfinite(probe.trace.loss()))


# -- hooks are removed -----------------------------------------------------------------------


def test_leaving_the_context_removes_every_hook(blobs: Data) -> None:
    pre_hooks = dict(optimizer_module._global_optimizer_pre_hooks)
    post_hooks = dict(optimizer_module._global_optimizer_post_hooks)
    torch.manual_seed(0)
    model = models.mlp(10, 3, depth=2, width=8)
    with Probe(model) as probe:
        assert len(optimizer_module._global_optimizer_pre_hooks) == len(pre_hooks) + 1
        training.train(model, blobs, steps=3, probe=probe)
    for name, module in model.named_modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, name
    assert dict(optimizer_module._global_optimizer_pre_hooks) == pre_hooks
    assert dict(optimizer_module._global_optimizer_post_hooks) == post_hooks
    training.train(model, blobs, steps=3)
    assert probe.trace.n_steps == 3  # nothing recorded after leaving


def test_explicit_optimizer_hooks_are_removed_too() -> None:
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Probe(model, optimizer=opt):
        assert opt._optimizer_step_pre_hooks and opt._optimizer_step_post_hooks
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


# -- only scalars --------------------------------------------------------------------------


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in _leaves(k) + _leaves(v)]
    if isinstance(value, list | tuple):
        return [x for v in value for x in _leaves(v)]
    if hasattr(value, "__dict__"):
        return _leaves(vars(value))
    if isinstance(value, array):  # the Trace's float64 buffers: scalars, stored compactly
        return value.tolist()
    return [value]


def test_the_trace_holds_only_scalars(blobs: Data) -> None:
    torch.manual_seed(0)
    model = models.cnn((1, 10), 3, depth=2, width=4, norm="batch")
    X, y = blobs
    with Probe(model, every=1) as probe:
        training.train(model, (X[:, None, :], y), steps=4, probe=probe)
    leaves = _leaves(probe.trace)
    assert len(leaves) > 100
    for leaf in leaves:
        assert isinstance(leaf, float | int | str | bool | type(None)), type(leaf)


# -- conv nets and transformers -------------------------------------------------------------


def test_transformer_layers_in_forward_order_with_out_proj_after_attention() -> None:
    torch.manual_seed(0)
    for pre_ln, block in [
        (True, ["norm1", "attn", "attn.out_proj", "norm2", "ffn.fc1", "ffn.fc2"]),
        (False, ["attn", "attn.out_proj", "norm1", "ffn.fc1", "ffn.fc2", "norm2"]),
    ]:
        model = models.transformer(6, 3, depth=2, width=8, heads=2, pre_ln=pre_ln)
        trace = _probe_one_forward(model, torch.randn(4, 6))
        expected = (
            ["embed.proj", "embed"]
            + [f"blocks.0.{n}" for n in block]
            + [f"blocks.1.{n}" for n in block]
            + (["final_norm"] if pre_ln else [])
            + ["out"]
        )
        assert trace.layers == expected
        # every column still belongs to its layer after the reordering
        for i, name in enumerate(trace.layers):
            module = model.get_submodule(name)
            weights = [p.grad for n, p in module.named_parameters(recurse=False) if "bias" not in n]
            norm = math.sqrt(sum(float(g.double().norm()) ** 2 for g in weights))
            assert trace.layer.rows["grad_norm_weight"][0][i] == pytest.approx(norm, rel=1e-6)


def test_rnn_cells_are_layers_and_the_head_activation_is_watched() -> None:
    torch.manual_seed(0)
    model = models.rnn(3, 2, cell="lstm", width=5, activation="relu")
    trace = _probe_one_forward(model, torch.randn(4, 7, 3))
    assert trace.layers == ["rnn", "head.fc", "head.out"]
    assert trace.layer_types["rnn"] == "LSTM"
    # the LSTM's output is tanh-bounded, so what head.fc receives is watched as a tanh too
    assert trace.act_sources == {"head.act": "head.fc", "head.fc.input": "rnn"}
    assert trace.act_kinds["head.fc.input"] == "tanh"
    assert np.all(np.isfinite(trace.layer.array("grad_norm_bias")))


# -- bad input -------------------------------------------------------------------------------


def test_frozen_parameters_are_skipped_and_listed(blobs: Data) -> None:
    torch.manual_seed(0)
    model = models.mlp(10, 3, depth=2, width=8)
    model.fc1.requires_grad_(False)
    model.out.bias.requires_grad_(False)
    with Probe(model) as probe:
        training.train(model, blobs, steps=2, probe=probe)
    assert probe.trace.facts.frozen_parameters == ["fc1.weight", "fc1.bias", "out.bias"]
    assert probe.trace.layers == ["fc2", "out"]
    assert math.isnan(probe.trace.layer.rows["grad_norm_bias"][0][1])  # out has no live bias


def test_a_model_the_probe_cannot_watch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="this model has no parameters"):
        Probe(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match=r"every parameter of this model is frozen \(2 tensors"):
        Probe(nn.Linear(2, 2).requires_grad_(False))
    with pytest.raises(TypeError, match="Probe needs an nn.Module, got function"):
        Probe(lambda x: x)
    with pytest.raises(ValueError, match="every must be a whole number >= 1, got 0"):
        Probe(nn.Linear(2, 2), every=0)


def test_locate_nonfinite_names_the_module_and_leaves_buffers_alone() -> None:
    torch.manual_seed(0)
    model = models.mlp(4, 2, depth=2, width=6, norm="batch")
    with torch.no_grad():
        model.fc2.weight[0, 0] = math.inf
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    probe = Probe(model)
    where = probe.locate_nonfinite(torch.randn(8, 4))
    assert where == {"first_nonfinite_module": "fc2", "nonfinite_weights": ["fc2"]}
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())


def test_the_forward_is_observed_only_on_a_sampled_step() -> None:
    """The Probe's global module hook exists during a sampled forward and at no other time:
    a hooked module takes torch's slow call path."""
    from torch.nn.modules import module as module_impl

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.seen: list[int] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen.append(len(module_impl._global_forward_hooks))
            return self.fc(x)

    torch.manual_seed(0)
    model = Spy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = len(module_impl._global_forward_hooks)
    with Probe(model, every=2) as probe:
        for _ in range(3):
            model(torch.randn(3, 4)).sum().backward()
            assert len(module_impl._global_forward_hooks) == before  # gone after the forward
            opt.step()
    assert [n - before for n in model.seen] == [1, 0, 1]  # steps 0 and 2 are sampled
    assert probe.trace.outputs.steps == [0, 2]


# -- activations applied as functions ---------------------------------------------------------


class _FunctionalNet(nn.Module):
    """Linear layers with the activation applied as a function between them."""

    def __init__(self, act: Any, bias: float = 0.0) -> None:
        super().__init__()
        self.act = act
        self.fc1, self.fc2, self.out = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        with torch.no_grad():
            self.fc1.bias.fill_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.fc2(self.act(self.fc1(x)))))


def test_functional_relus_are_measured_from_what_the_next_layer_receives() -> None:
    torch.manual_seed(0)
    model = _FunctionalNet(torch.relu, bias=-100.0)  # fc1's units never fire
    x = torch.randn(16, 6)
    trace = _probe_one_forward(model, x)
    assert trace.act_layers == ["fc2.input", "out.input"]
    assert trace.act_kinds == {"fc2.input": "relu", "out.input": "relu"}
    assert trace.act_sources == {"fc2.input": "fc1", "out.input": "fc2"}
    dead = trace.acts.array("dead_frac")[0]
    h = torch.relu(model.fc2(torch.relu(model.fc1(x))))
    assert dead[0] == 1.0  # every unit of fc1's output is 0 for every example
    assert dead[1] == pytest.approx(float((h.amax(0) <= 0).float().mean()))


def test_functional_sigmoid_and_tanh_are_told_apart_by_their_values() -> None:
    torch.manual_seed(0)
    for act, kind in ((torch.sigmoid, "sigmoid"), (torch.tanh, "tanh")):
        trace = _probe_one_forward(_FunctionalNet(act), torch.randn(16, 6))
        assert set(trace.act_kinds.values()) == {kind}
        assert np.all(np.isnan(trace.acts.array("dead_frac")))
        assert np.all(np.isfinite(trace.acts.array("saturated_frac")))


def test_a_norm_between_layers_is_not_mistaken_for_an_activation() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.LayerNorm(32), nn.Linear(32, 3))
    trace = _probe_one_forward(model, torch.randn(16, 6))
    assert trace.act_layers == []


def test_weight_norms_are_measured_on_sampled_steps_and_held_between() -> None:
    # Measured independently: each layer's ||W||, ||b|| just before each update.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    actual = []
    with Probe(net, every=4) as probe:
        for _ in range(9):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            actual.append(
                [
                    math.hypot(float(m.weight.detach().norm()), float(m.bias.detach().norm()))
                    for m in (net[0], net[2])
                ]
            )
            opt.step()
    got = probe.trace.layer.array("weight_norm")
    for step in range(9):
        np.testing.assert_allclose(got[step], actual[step - step % 4], rtol=1e-6)
    assert not np.allclose(actual[0], actual[3], rtol=1e-3)  # the weights did move meanwhile


def test_weights_are_measured_on_a_step_whose_gradients_are_not_finite() -> None:
    # Step 1 of 16 (not sampled): an Inf gradient puts Inf into the weights at its update,
    # so step 2's weights are Inf; both steps' gradients are non-finite, so both measure.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(8, 4)
    before = []
    with Probe(net) as probe:
        for step in range(4):
            opt.zero_grad()
            net(x).sum().backward()
            if step == 1:
                assert net[2].weight.grad is not None
                net[2].weight.grad[0, 0] = math.inf
            before.append(
                math.hypot(float(net[0].weight.detach().norm()), float(net[0].bias.detach().norm()))
            )
            opt.step()
    t = probe.trace
    assert t.steps.array("nonfinite_weight")[:, 0].tolist() == [0.0, 0.0, 1.0, 1.0]
    weight_norm = t.layer.array("weight_norm")
    assert weight_norm[1, 0] == pytest.approx(before[1], rel=1e-6)  # measured, not step 0's
    assert before[1] != before[0]
    assert not np.isfinite(weight_norm[2:, 1]).any()

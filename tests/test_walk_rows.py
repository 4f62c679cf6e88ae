"""A sampled forward's statistics computed over stacks of same-shaped outputs
(``stats.ForwardWalk`` with ``WalkRows``) are those each module's output gives alone
(``stats.activation_stats``, ``stats.mean_std``), bit for bit: for every activation rule,
channel units after a convolution, outputs too large or not contiguous to stack, buffers
reused and grown from walk to walk, and outputs changed in place after their module ran."""

from __future__ import annotations

import math

import torch
from torch import nn

from deepdoctor.probe import Probe
from deepdoctor.stats import (
    STACK_NUMEL,
    ForwardWalk,
    WalkRows,
    activation_modules,
    activation_stats,
    mean_sqdev,
    mean_std,
    parameter_layers,
    row_mean_sqdev,
)


class _Net(nn.Module):
    """Linear layers of width 16 behind six kinds of activation (several of each, so they
    stack), a ReLU in place after a layer, a layer too large to stack, a transposed (not
    contiguous) output, and a small conv block whose ReLU has channel units."""

    def __init__(self, wide: int = 16) -> None:
        super().__init__()
        kinds = [nn.Sigmoid, nn.Tanh, nn.ReLU, nn.Hardtanh, nn.GELU, nn.Sigmoid, nn.ReLU]
        self.body = nn.Sequential(*(m for k in kinds for m in (nn.Linear(wide, wide), k())))
        self.inplace = nn.Sequential(nn.Linear(wide, wide), nn.ReLU(inplace=True))
        self.big = nn.Linear(wide, STACK_NUMEL // 8 + 1)
        self.big_act = nn.Tanh()
        self.t_act = nn.Sigmoid()
        self.conv = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(wide, 3)

    def forward(self, x: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        h = self.inplace(self.body(x))
        big = self.big_act(self.big(h)).mean()
        t = self.t_act(h.t()).mean()  # a transposed input: the output is laid out alike
        c = self.conv(img).mean()
        return self.head(h).sum() + big + t + c


def _alone(model: nn.Module, x: torch.Tensor, img: torch.Tensor) -> tuple[dict, dict]:
    """Each layer's output [mean, std] and each activation's ACT_STATS, measured module by
    module with plain hooks: what the stacked statistics must equal."""
    layers, _ = parameter_layers(model)
    acts = activation_modules(model)
    kind_of = {m: (n, k) for n, (m, k) in acts.items()}
    name_of = {m: n for n, m in layers.items()}
    outputs: dict[str, list[float]] = {}
    act_stats: dict[str, list[float]] = {}
    last: list[nn.Module] = []

    def hook(m: nn.Module, a: object, out: torch.Tensor) -> None:
        if m in name_of:
            last[:] = [m]
            mean, std = mean_std(out.detach())
            outputs[name_of[m]] = [mean.item(), std.item()]
        elif m in kind_of:
            name, kind = kind_of[m]
            conv_like = bool(last) and isinstance(last[0], nn.Conv2d)
            act_stats[name] = activation_stats(out, kind, conv_like).tolist()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        model(x, img)
    finally:
        for h in handles:
            h.remove()
    return outputs, act_stats


def _walked(model: nn.Module, x: torch.Tensor, img: torch.Tensor, rows: WalkRows) -> tuple:
    layers, _ = parameter_layers(model)
    with ForwardWalk(layers, activation_modules(model), rows) as walk:
        model(x, img)
    res = walk.read()
    return res.outputs, res.acts


def _same(a: dict[str, list[float]], b: dict[str, list[float]]) -> None:
    assert list(a) == list(b)
    for name in a:
        for u, v in zip(a[name], b[name], strict=True):
            assert u == v or (math.isnan(u) and math.isnan(v)), (name, a[name], b[name])


def test_stacked_walk_statistics_equal_each_module_alone() -> None:
    torch.manual_seed(0)
    model = _Net()
    rows = WalkRows()
    for batch in (8, 8, 5, 12):  # reused, then new shapes, then more rows than before
        x = torch.randn(batch, 16) * 3
        img = torch.randn(2, 3, 6, 6)
        outputs, acts = _walked(model, x, img, rows)
        want_outputs, want_acts = _alone(model, x, img)
        _same(outputs, want_outputs)
        _same(acts, want_acts)
        # the small ones were stacked (one buffer per shape and kind), the rest alone
        assert (torch.Size([batch, 16]), torch.device("cpu"), "sigmoid", False) in rows.groups
    assert (torch.Size([2, 4, 6, 6]), torch.device("cpu"), "relu", True) in rows.groups
    # real statistics: sigmoids of inputs of std ~3 saturate in part, ReLUs are not all dead
    assert 0.0 < acts["body.1"][3] < 1.0
    assert 0.0 <= acts["body.5"][2] < 1.0
    assert acts["body.1"][0] == want_acts["body.1"][0] > 0.0


def test_layer_output_is_measured_before_an_in_place_activation() -> None:
    """``inplace.1`` (ReLU, in place) overwrites ``inplace.0``'s output after its hook: the
    copy taken as the layer ran keeps its negative values, so its mean is the pre-ReLU one."""
    torch.manual_seed(1)
    model = _Net()
    x, img = torch.randn(8, 16), torch.randn(2, 3, 6, 6)
    outputs, acts = _walked(model, x, img, WalkRows())
    layer = model.inplace[0]
    with torch.no_grad():
        pre = layer(model.body(x))
    assert outputs["inplace.0"][0] == mean_std(pre)[0].item() < acts["inplace.1"][0]


def test_row_mean_sqdev_equals_each_row_alone() -> None:
    g = torch.Generator().manual_seed(0)
    for shape, scale, shift in [((64, 64), 1.0, 0.0), ((7, 5), 1e-3, 5.0), ((1, 32768), 100, -3)]:
        xs = [torch.randn(*shape, generator=g) * scale + shift for _ in range(5)]
        mean, sqdev = row_mean_sqdev(torch.stack(xs).view(5, -1))
        for i, x in enumerate(xs):
            m, s = mean_sqdev(x)
            assert s is not None
            assert torch.equal(mean[i], m) and torch.equal(sqdev[i], s)


def _stacked_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """The bytes of float32 rows that one forward's small contiguous outputs (of layers
    and activations) fill, counted with plain hooks."""
    watched = {*parameter_layers(model)[0].values()}
    watched |= {m for m, _ in activation_modules(model).values()}
    sizes: list[int] = []

    def hook(m: nn.Module, a: object, out: torch.Tensor) -> None:
        if m in watched and 2 <= out.numel() <= STACK_NUMEL and out.is_contiguous():
            sizes.append(out.numel() * 4)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return sum(sizes)


def test_buffers_stay_those_of_the_last_walk_when_every_batch_has_another_size() -> None:
    """A run whose batches all differ in size (sequences packed by length, the last batch of
    an epoch) keeps the buffers of the last sampled forward only, not one set per size seen;
    a size seen again reuses them."""
    torch.manual_seed(0)
    net = nn.Sequential(*(m for _ in range(6) for m in (nn.Linear(16, 16), nn.Tanh())))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    with Probe(net, optimizer=opt, every=1) as probe:
        for batch in [*range(4, 34), 33]:
            loss = net(torch.randn(batch, 16)).square().mean()
            probe.record_loss(loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if batch == 33:
                kept = {k: g.buf.data_ptr() for k, g in probe._walk_rows.groups.items()}
        groups = probe._walk_rows.groups
        held = sum(g.buf.numel() * g.buf.element_size() for g in groups.values())
        assert {k: g.buf.data_ptr() for k, g in groups.items()} == kept
    # 12 outputs of 33 x 16 float32: 25,344 bytes (30 sizes kept: 12 x 16 x 4 x 555)
    assert held == _stacked_bytes(net, torch.randn(33, 16)) == 12 * 33 * 16 * 4


class _Checked(nn.Module):
    """A Linear and a Tanh, then a check that raises on a non-finite batch (a loop that
    skips bad batches), then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.t, self.b = nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.t(self.a(x))
        if not torch.isfinite(h).all():
            raise ValueError("bad batch")
        return self.b(h)


def test_a_forward_that_raises_then_an_inference_mode_pass_leave_the_walks_working() -> None:
    """The walk of a forward that raised ends at the next forward, here one under
    ``torch.inference_mode``: its buffers are made there, and must still take the next
    sampled training forward's outputs (an inference tensor cannot be written outside)."""
    torch.manual_seed(0)
    net = _Checked()
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    xs = [torch.randn(4, 8) for _ in range(4)]
    xs[0][0, 0] = math.nan
    with Probe(net, optimizer=opt, every=1) as probe:
        for x in xs:
            try:
                loss = net(x).square().mean()
            except ValueError:
                with torch.inference_mode():
                    net.eval()
                    net(torch.randn(4, 8))
                    net.train()
                continue
            with torch.no_grad():  # the layer's output, before the step changes it
                want = mean_std(nn.functional.linear(x, net.a.weight, net.a.bias))
            probe.record_loss(loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
    out = probe.trace.outputs.rows
    assert out["out_mean"][-1][0] == want[0].item() != 0.0
    assert out["out_std"][-1][0] == want[1].item() > 0.0

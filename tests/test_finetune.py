"""Fine-tuning diagnosis (issue 15, item 8): a body pretrained on digits 0-4, a new head
fine-tuned on 5-9, read per part; pretrained_drift when fine-tuning wipes the body out."""

from __future__ import annotations

import functools

import pytest
import torch
from cases.finetune import finetune, pretrained
from torch import nn

import deepdoctor as dd
from deepdoctor.detectors.transfer import WIPEOUT_DRIFT
from deepdoctor.diagnose import diagnose_experiment
from deepdoctor.integrations.watch import Watch
from deepdoctor.pretrained import DRIFT_STEPS, pretrained_layers
from deepdoctor.remedies import Context, apply_remedies
from deepdoctor.remedies.base import Prescription

BODY = ["fc1", "fc2"]


def fine_tune(lr: float, seed: int, steps: int = 40, **kw: object) -> dd.Diagnosis:
    exp = finetune("digits/mlp", functools.partial(torch.optim.Adam, lr=lr), steps=steps)
    model = exp.replace(seed=seed).build()
    return dd.diagnose(
        model, exp.train, exp.val, optimizer=exp.optimizer, steps=steps, seed=seed,
        reference=False, **kw,
    )  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_sane_fine_tune_is_quiet_and_a_destructive_one_warns(seed: int) -> None:
    healthy = fine_tune(1e-3, seed, pretrained=BODY)
    assert "pretrained_drift" not in healthy.kinds()
    assert max(healthy.fine_tuning["drift"].values()) < WIPEOUT_DRIFT / 2
    wiped = fine_tune(3e-2, seed, pretrained=BODY)
    (f,) = [f for f in wiped.findings if f.kind == "pretrained_drift"]
    assert f.severity == "warning" and f.remedies == [
        "discriminative_lr",
        "lr_warmup",
        "freeze_pretrained",
    ]
    assert f.evidence["max_drift"] > 3 * WIPEOUT_DRIFT and set(f.layers) <= set(BODY)
    # Adam moves every weight by about lr per step, whatever its scale: the body's update
    # ratio comes close to the head's instead of staying well under it
    assert 0.3 < f.evidence["update_ratio_pretrained_to_head"] < 3


def test_the_drift_is_the_relative_weight_change_after_the_first_steps() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    start = [p.detach().clone() for p in model[0].parameters()]
    X, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    with dd.Probe(model, optimizer=opt, pretrained=["0"]) as probe:
        for step in range(DRIFT_STEPS + 3):
            loss = nn.functional.cross_entropy(model(X), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            probe.record_loss(loss)
            if step == DRIFT_STEPS - 1:
                now = [p.detach() for p in model[0].parameters()]
                moved = sum(float(((a - b) ** 2).sum()) for a, b in zip(now, start, strict=True))
                size = sum(float((b**2).sum()) for b in start)
    facts = probe.trace.facts
    assert facts.pretrained_layers == ["0"] and facts.drift_steps == DRIFT_STEPS
    assert facts.pretrained_drift["0"] == pytest.approx((moved / size) ** 0.5, rel=1e-5)


def test_frozen_layers_are_listed_and_a_state_dict_names_the_loaded_layers() -> None:
    exp = finetune("digits/mlp", functools.partial(torch.optim.Adam, lr=1e-3), steps=20)
    model = exp.build()
    assert pretrained_layers(model, pretrained("digits/mlp")) == BODY  # the head is missing
    model.fc1.requires_grad_(False)
    diag = dd.diagnose(model, exp.train, steps=20, reference=False, pretrained=exp.pretrained)
    reading = diag.fine_tuning
    assert reading["frozen_layers"] == ["fc1"] and reading["head_layers"] == ["out"]
    assert list(reading["drift"]) == ["fc2"]  # a frozen layer does not move
    assert diag.to_dict()["fine_tuning"]["frozen_layers"] == ["fc1"]
    assert dd.diagnose(model, exp.train, steps=5, reference=False).fine_tuning is None
    short = dd.diagnose(model, exp.train, steps=5, reference=False, pretrained=exp.pretrained)
    assert {"what": "fine-tuning", "kinds": ["pretrained_drift"]}.items() <= next(
        e for e in short.coverage["cannot_judge"] if e["what"] == "fine-tuning"
    ).items()


def test_a_pretrained_name_the_model_lacks_is_one_sentence() -> None:
    with pytest.raises(ValueError, match=r"pretrained names \['encoder'\] are not modules"):
        dd.Probe(dd.models.mlp(4, 2), pretrained=["encoder"])
    with pytest.raises(ValueError, match="none of the 1 keys of the pretrained state dict"):
        dd.Probe(dd.models.mlp(4, 2), pretrained={"encoder.weight": torch.zeros(1)})


def test_the_remedies_lower_the_pretrained_rate_or_freeze_it() -> None:
    exp = finetune("digits/mlp", functools.partial(torch.optim.Adam, lr=3e-2), steps=40)
    ctx = Context(example=exp.train[0][:4])
    slow = apply_remedies(exp, ["discriminative_lr"], ctx)
    model = slow.build()
    opt = dd.training.make_optimizer(slow.optimizer, model)
    rates = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert rates[id(model.fc1.weight)] == pytest.approx(3e-3) and rates[id(model.out.bias)] == 3e-2
    assert "pretrained_drift" not in diagnose_experiment(slow, reference=False).kinds()
    frozen = apply_remedies(exp, ["freeze_pretrained"], ctx).build()
    assert [n for n, p in frozen.named_parameters() if p.requires_grad] == [
        "out.weight",
        "out.bias",
    ]
    with pytest.raises(Prescription, match="does not know which layers are pretrained"):
        apply_remedies(exp.replace(pretrained=None), ["freeze_pretrained"], ctx)


def test_the_callbacks_pass_pretrained_to_their_probe() -> None:
    watch = Watch(pretrained=["fc1"])
    watch.start(dd.models.mlp(4, 2, depth=2, width=8))
    assert watch.probe is not None and watch.probe.trace.facts.pretrained_layers == ["fc1"]
    watch.probe.detach()

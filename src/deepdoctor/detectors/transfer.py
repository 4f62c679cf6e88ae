"""Fine-tuning detector: pretrained_drift, and the per-part reading it stands on.

Reads what the Probe wrote when told which layers are pretrained (``pretrained=``, see
``deepdoctor.pretrained``): the frozen layers, each trainable pretrained layer's drift
||W - W_0|| / ||W_0|| after the first ``drift_steps`` steps, and the sampled update-to-weight
ratios, compared between the pretrained part and the new head.
"""

from __future__ import annotations

import math
from typing import Any

from ..findings import Finding
from ..trace import Trace
from ._common import nanmedian, round_sig

# A pretrained layer that has moved by more than 30% of its norm in the first 10 steps has
# lost what it learned. Calibrated in plain PyTorch (an MLP 64-128-128 pretrained on digits
# 0-4 by Adam 1e-3 for 300 steps, a new head fine-tuned on digits 5-9; seeds 0-2; the largest
# per-layer drift after 10 steps): sane rates drift 0.046-0.050 (SGD 0.1), 0.108-0.110 (Adam
# 1e-3), 0.159-0.168 (SGD 0.1 with momentum 0.9), and keep the pretraining task (the old
# head on the fine-tuned body: 0.96-0.99 accuracy on 0-4, 0.99 before); destructive rates
# drift 0.55-0.70 (SGD 1), 0.70-0.74 (Adam 1e-2), 1.70-1.79 (Adam 3e-2), 5.7-5.8 (Adam 1e-1),
# and lose it after 20 steps (old head 0.59-0.82, 0.87, 0.51-0.53, 0.11-0.41; a 50-sample
# linear probe on the features falls from 0.99 to 0.86-0.95, 0.92-0.93, 0.76-0.81,
# 0.53-0.65, where a random body gives 0.88-0.91). 0.3 sits at the geometric middle of the
# gap (0.168 .. 0.547), a factor 1.8 from either side.
WIPEOUT_DRIFT = 0.3
REMEDIES = ["discriminative_lr", "lr_warmup", "freeze_pretrained"]


def _median_ratio(trace: Trace, names: list[str]) -> float:
    """The median over ``names`` of each layer's median sampled update-to-weight ratio."""
    index = [trace.layers.index(n) for n in names if n in trace.layers]
    if not index or not len(trace.updates):
        return math.nan
    per_layer = nanmedian(trace.updates.array("update_ratio")[:, index], axis=0)
    return float(nanmedian(per_layer))


def fine_tuning(trace: Trace) -> dict[str, Any] | None:
    """The per-part reading of a fine-tuning run, JSON-ready; None when no layer was said to
    be pretrained. ``head_layers``: the trainable layers that are not pretrained;
    ``update_ratio_pretrained`` / ``_head``: medians of the sampled update-to-weight ratios
    (per layer over the steps, then over the part's layers)."""
    facts = trace.facts
    if facts.pretrained_layers is None:
        return None
    pretrained = [n for n in facts.pretrained_layers if n in trace.layers]
    head = [n for n in trace.layers if n not in set(facts.pretrained_layers)]
    up, uh = _median_ratio(trace, pretrained), _median_ratio(trace, head)
    return {
        "pretrained_layers": list(facts.pretrained_layers),
        "frozen_layers": list(facts.frozen_layers),
        "head_layers": head,
        "update_ratio_pretrained": round_sig(up),
        "update_ratio_head": round_sig(uh),
        "update_ratio_pretrained_to_head": round_sig(up / uh) if uh > 0 else math.nan,
        "drift": {n: round_sig(d) for n, d in (facts.pretrained_drift or {}).items()},
        "drift_steps": facts.drift_steps,
    }


def detect(trace: Trace) -> list[Finding]:
    drift = trace.facts.pretrained_drift or {}
    wiped = sorted((n for n, d in drift.items() if d > WIPEOUT_DRIFT), key=lambda n: -drift[n])
    reading = fine_tuning(trace)
    if not wiped or reading is None:
        return []
    worst = drift[wiped[0]]
    steps = trace.facts.drift_steps
    return [
        Finding(
            kind="pretrained_drift",
            severity="warning",
            summary=(
                f"In its first {steps} steps fine-tuning moved {len(wiped)} of "
                f"{len(drift)} pretrained layers by more than {WIPEOUT_DRIFT:.0%} of their "
                f"norm (up to {worst:.0%}, in {wiped[0]}): what pretraining learned is being "
                "overwritten: give the pretrained part a lower rate, warm up, or freeze it."
            ),
            layers=wiped,
            evidence={"max_drift": round_sig(worst), "threshold": WIPEOUT_DRIFT, **reading},
            remedies=list(REMEDIES),
        )
    ]

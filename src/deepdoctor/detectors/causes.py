"""Root cause before symptoms: a finding that another one explains is folded under it.

One fault often shows as several: inputs scaled x1000 make the first layer's gradients
huge; an output layer scaled up makes the loss at initialisation confidently wrong and, its
weights being large, makes its own relative gradient tiny, so every earlier layer looks
"exploding" next to it. Reporting the consequence as a second warning sends the user (and
treat) after the symptom. So the consequence stays in the list, with ``caused_by`` naming
its root and its severity lowered to ``info``, and the root's evidence names what it
explains.

The table (consequence, root, when), each row tested in tests/test_detectors.py:

======================  ===============  ====================================================
consequence             root             when
======================  ===============  ====================================================
exploding_gradients     unscaled_inputs  the inputs are large (not tiny): large inputs make
                                         large first-layer gradients
exploding_gradients     bad_init_loss    the gradients grow towards the input *in depth*
                                         (not a jump in time) and only at the output: the
                                         outsized output layer that miscalibrates the loss
                                         also shrinks its own relative gradient, so without
                                         it the layers are level (within EXPLODE_RATIO). A
                                         growth through the layers before it (a chaotic
                                         init) is a fault of its own.
nonfinite               diverging_loss   the loss blew up at an earlier step than the first
                                         NaN / Inf: the overflow is where the blow-up ended
======================  ===============  ====================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ..findings import Finding
from .gradients import EXPLODE_RATIO

# (consequence, root, does the root explain this consequence?)
Rule = tuple[str, str, Callable[[Finding, Finding], bool]]


def _large_inputs(consequence: Finding, root: Finding) -> bool:
    rms = root.evidence.get("rms")
    return isinstance(rms, int | float) and rms > 1.0  # too large, not too small


def _grows_at_output(consequence: Finding, root: Finding) -> bool:
    inner = consequence.evidence.get("first_over_last_before_output")
    # NaN (too few layers to tell without the output) compares False: the output explains it
    return "first_over_last" in consequence.evidence and not (
        isinstance(inner, int | float) and inner > EXPLODE_RATIO
    )


def _blew_up_first(consequence: Finding, root: Finding) -> bool:
    nan_at, blowup_at = consequence.evidence.get("step"), root.evidence.get("step")
    return isinstance(nan_at, int) and isinstance(blowup_at, int) and blowup_at < nan_at


CAUSES: tuple[Rule, ...] = (
    ("exploding_gradients", "unscaled_inputs", _large_inputs),
    ("exploding_gradients", "bad_init_loss", _grows_at_output),
    ("nonfinite", "diverging_loss", _blew_up_first),
)


def fold_consequences(findings: list[Finding]) -> list[Finding]:
    """The findings with each consequence that a root problem explains (``CAUSES``) set to
    ``info`` and ``caused_by`` the root; the root's evidence lists what it explains."""
    by_kind = {f.kind: f for f in findings if f.is_problem}
    out = list(findings)
    for consequence_kind, root_kind, explains in CAUSES:
        consequence, root = by_kind.get(consequence_kind), by_kind.get(root_kind)
        if consequence is None or root is None or consequence.caused_by is not None:
            continue
        if not explains(consequence, root):
            continue
        folded = replace(consequence, severity="info", caused_by=root_kind)
        explained = [*root.evidence.get("explains", []), consequence_kind]
        grown = replace(root, evidence={**root.evidence, "explains": explained})
        out = [folded if f is consequence else grown if f is root else f for f in out]
        by_kind[root_kind] = grown
        by_kind.pop(consequence_kind)
    return out

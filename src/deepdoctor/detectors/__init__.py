"""detect: a Trace in, findings out, one detector module per family.

``detect`` is a pure function of the Trace, so a user who ran the Probe in their own loop
gets the same judgement as ``diagnose`` and ``checkup``. Beyond the per-step statistics it
reads the typed run facts (``trace.facts``: task, classes and their counts, how the run
stopped), which diagnose writes from the data and the Probe from
``record_loss(loss, targets=y)``, and skips a rule whose inputs are unknown rather than guess.
``coverage`` says what the Trace held and which of those skipped rules could not be judged.
"""

from __future__ import annotations

from collections.abc import Callable

from ..findings import Finding, sort_findings
from ..trace import Trace
from . import activations, data, fit, gradients, loss, transfer
from .causes import CAUSES, fold_consequences
from .coverage import coverage
from .loss import BLOWUP_FACTOR
from .transfer import fine_tuning

FAMILIES: tuple[Callable[[Trace], list[Finding]], ...] = (
    gradients.detect,
    activations.detect,
    loss.detect,
    data.detect,
    fit.detect,
    transfer.detect,
)


def detect(trace: Trace) -> list[Finding]:
    """Every finding the Trace supports, most severe first; a consequence that a root
    problem explains comes with ``caused_by`` set and at ``info`` (``detectors.causes``).

    >>> import deepdoctor as dd
    >>> trace = dd.Trace(["fc"], {"fc": "Linear"})
    >>> dd.detect(trace)
    []
    """
    if not isinstance(trace, Trace):
        raise TypeError(
            f"detect needs a deepdoctor.Trace (probe.trace), got {type(trace).__name__}"
        )
    findings: list[Finding] = []
    for family in FAMILIES:
        findings += family(trace)
    return sort_findings(fold_consequences(findings))


__all__ = [
    "BLOWUP_FACTOR",
    "CAUSES",
    "FAMILIES",
    "coverage",
    "detect",
    "fine_tuning",
    "fold_consequences",
]

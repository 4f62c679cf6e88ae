"""Numbers in sentences a person reads: one rounding, used by the detectors' summaries and
by everything the report and the terminal print."""

from __future__ import annotations

import math
import re


def rounded(value: float) -> str:
    """A number in a sentence, rounded for people: ``over 10^33``, ``1,200``, ``3.2×10^-5``.

    Above a million the digits stop meaning anything to a reader (a gradient ratio of 3e+33
    says "astronomically larger"), so only the power of ten is kept.
    """
    if not math.isfinite(value):
        return "n/a"
    if value < 0:
        return "-" + rounded(-value)
    if value >= 1e6:
        power = math.floor(math.log10(value))
        return f"10^{power}" if value == 10.0**power else f"over 10^{power}"
    if value >= 999.5:  # what .3g would print as 1e+03
        return f"{value:,.0f}"
    text = f"{value:.2g}" if value < 1e-3 else f"{value:.3g}"
    if "e" in text:  # below 1e-4: the mantissa and the power, never Python's e-notation
        mantissa, exponent = text.split("e")
        return f"{mantissa}×10^{int(exponent)}"
    return text


E_NOTATION = re.compile(r"(?<![\w.])\d+(?:\.\d+)?e[+-]\d+")


def readable(text: str) -> str:
    """``text`` (a finding's summary) with every e-notation number written by ``rounded``:
    "3e+33x smaller" reads "over 10^33x smaller"."""
    return E_NOTATION.sub(lambda m: rounded(float(m.group(0))), text)

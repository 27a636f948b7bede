"""The one rule for a judge's score that is not a number: it is dropped, counted, and never decides.

A judge (an eval metric, a reward model, a safety classifier, SPO's preference model) may return NaN or an
infinity for an image (an fp16 head overflowing, a degenerate embedding). Compared with ``>``/``>=``/``==``
such a value silently picks a side (NaN is never greater, so the other image always wins), a mean over it is
NaN, and a standard deviation of NaN would standardise every other score to NaN. So every place that
compares, averages, standardises or thresholds a score asks these functions first:

- :func:`is_finite_score`: whether a value may be used at all.
- :func:`finite_values`: the usable values of a list and how many were dropped.
- :func:`finite_mean`: a mean over the usable values only, with the dropped count.

Callers turn a dropped score into a counted reject with :data:`NON_FINITE` as its reason (label,
SPO pairing), leave it out of a statistic and report how many they left out (eval, validation), or
stop with one ``error:`` line where nothing usable is left (a judge's calibration).
"""
from __future__ import annotations

import math
from typing import Iterable

NON_FINITE = "non-finite judge score"  # the drop reason of rejects/ and of the drop counters


def is_finite_score(value) -> bool:
    """True for a real, finite number (int, float, numpy or 0-d torch scalar); False for None, NaN, +-inf
    and anything that is not a number."""
    if value is None:
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def finite_values(values: Iterable) -> tuple[list[float], int]:
    """``(the finite values as floats, in order; how many values were not finite)``."""
    kept, dropped = [], 0
    for v in values:
        if is_finite_score(v):
            kept.append(float(v))
        else:
            dropped += 1
    return kept, dropped


def finite_mean(values: Iterable) -> tuple[float | None, int]:
    """``(mean of the finite values, or None when there is none; how many were dropped)`` (``math.fsum``)."""
    kept, dropped = finite_values(values)
    return (math.fsum(kept) / len(kept) if kept else None), dropped

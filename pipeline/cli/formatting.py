"""Numbers and counts in one-line summaries: printed so that what differs reads differently."""
from __future__ import annotations

import math
from typing import Sequence

MAX_DIGITS = 17  # a float64 needs at most 17 significant digits to read back exactly (IEEE 754-2008, 5.12.2)


def distinct_digits(values: Sequence[float], digits: int = 4) -> list[str]:
    """``values`` in ``%g`` style with ``digits`` significant digits, or more until no two different values
    print the same (a summary that prints "e_w 1.204, e_l 1.204" for 1.2041 and 1.2043 hides the one
    difference that matters). NaNs print as "nan" and count as equal to each other.

    Example: ``distinct_digits([1.20411, 1.20413, 0.5])`` -> ``["1.20411", "1.20413", "0.5"]`` (4 digits
    would print "1.204" twice).
    """
    vals = [float(v) for v in values]
    for d in range(digits, MAX_DIGITS):
        out = [f"{v:.{d}g}" for v in vals]
        if all(out[i] != out[j] for i in range(len(vals)) for j in range(i)
               if vals[i] != vals[j] and not (math.isnan(vals[i]) and math.isnan(vals[j]))):
            return out
    return [repr(v) for v in vals]  # the shortest text that reads back as the same float: never ambiguous


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``"1 shard"``, ``"0 shards"``, ``"2 shards"``: the noun singular only when ``n`` is 1 (``plural`` for
    irregular nouns; the default adds "s")."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"

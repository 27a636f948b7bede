"""The largest batch that fits: double until a try fails, then bisect between the last fit and the failure."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class SearchResult:
    max_batch: int  # 0: not even ``start`` fits
    hit_limit: bool  # ``limit`` fits: the true maximum may be larger
    tries: list = field(default_factory=list)  # [(batch, fits), ...] in the order tried


def largest_batch(fits: Callable[[int], bool], start: int = 1, limit: int = 256) -> SearchResult:
    """Largest ``b`` in [start, limit] with ``fits(b)``, assuming fitting is monotone in ``b``."""
    tries: list = []

    def attempt(b: int) -> bool:
        ok = bool(fits(b))
        tries.append((b, ok))
        return ok

    if not attempt(start):
        return SearchResult(0, False, tries)
    good, bad = start, None
    while bad is None:
        if good >= limit:
            return SearchResult(good, True, tries)
        b = min(2 * good, limit)
        if attempt(b):
            good = b
        else:
            bad = b
    while bad - good > 1:
        mid = (good + bad) // 2
        if attempt(mid):
            good = mid
        else:
            bad = mid
    return SearchResult(good, False, tries)

"""The largest batch that fits.

Two searches over ``fits(b) -> bool`` (fitting assumed monotone in ``b``):

- :func:`largest_batch`: double until a try fails, then bisect between the last fit and the failure
  (no prior knowledge; ~2 log2(max) tries, the big batches being the slow ones);
- :func:`largest_batch_near`: start from a predicted batch (e.g. :func:`predict_batch`, peak memory
  linear in the batch, from two measured small batches) and walk outwards with growing strides, then
  bisect: an exact prediction costs two tries (it fits, one more does not).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class SearchResult:
    max_batch: int  # 0: not even ``start`` fits
    hit_limit: bool  # ``limit`` fits: the true maximum may be larger
    tries: list = field(default_factory=list)  # [(batch, fits), ...] in the order tried
    predicted: int | None = None  # the guess the search started from (largest_batch_near)


class _Tries:
    def __init__(self, fits: Callable[[int], bool], known: dict | None = None):
        self.fits, self.tries, self.known = fits, [], dict(known or {})

    def __call__(self, b: int) -> bool:
        if b not in self.known:
            self.known[b] = bool(self.fits(b))
            self.tries.append((b, self.known[b]))
        return self.known[b]


def _bisect(attempt: _Tries, good: int, bad: int) -> int:
    while bad - good > 1:
        mid = (good + bad) // 2
        if attempt(mid):
            good = mid
        else:
            bad = mid
    return good


def largest_batch(fits: Callable[[int], bool], start: int = 1, limit: int = 256) -> SearchResult:
    """Largest ``b`` in [start, limit] with ``fits(b)``: doubling from ``start``, then bisection."""
    attempt = _Tries(fits)
    if not attempt(start):
        return SearchResult(0, False, attempt.tries)
    good, bad = start, None
    while bad is None:
        if good >= limit:
            return SearchResult(good, True, attempt.tries)
        b = min(2 * good, limit)
        if attempt(b):
            good = b
        else:
            bad = b
    return SearchResult(_bisect(attempt, good, bad), False, attempt.tries)


def largest_batch_near(
    fits: Callable[[int], bool], guess: int, limit: int = 256, known: dict | None = None
) -> SearchResult:
    """Largest ``b`` in [1, limit] with ``fits(b)``, searched outwards from ``guess``.

    ``known``: results already measured (``{batch: fits}``, e.g. the two small batches a prediction
    came from): not tried again and not listed in ``tries``. Tries ``guess``; if it fits, ``guess + 1``,
    ``guess + 2``, ``guess + 4``, ... until one fails (or ``limit``), else ``guess - 1``, ``guess - 2``,
    ``guess - 4``, ... until one fits (or nothing does); then bisects the last gap. Tries: 2 when the
    guess is exact, about 2 log2(error) + 2 otherwise.
    """
    attempt = _Tries(fits, known)
    guess = max(1, min(int(guess), limit))
    if attempt(guess):
        good, stride = guess, 1
        while True:
            if good >= limit:
                return SearchResult(good, True, attempt.tries, guess)
            b = min(good + stride, limit)
            if not attempt(b):
                return SearchResult(_bisect(attempt, good, b), False, attempt.tries, guess)
            good, stride = b, 2 * stride
    bad, stride = guess, 1
    while True:
        b = max(bad - stride, 1)
        if attempt(b):
            return SearchResult(_bisect(attempt, b, bad), False, attempt.tries, guess)
        if b == 1:
            return SearchResult(0, False, attempt.tries, guess)
        bad, stride = b, 2 * stride


def predict_batch(peak_small: int, peak_large: int, small: int, large: int, capacity: int) -> int:
    """Largest batch whose peak stays within ``capacity`` bytes, if peak memory is linear in the batch
    through the two measurements ``(small, peak_small)`` and ``(large, peak_large)`` (weights, gradients
    and optimizer state are constant; activations grow with each pair). At least 1; ``large`` when the
    two peaks are equal (no slope: the caller's search walks up from there)."""
    if large <= small:
        raise ValueError("predict_batch needs two different batch sizes, the smaller first")
    per_pair = (peak_large - peak_small) / (large - small)
    if per_pair <= 0:
        return large
    return max(1, small + int((capacity - peak_small) // per_pair))

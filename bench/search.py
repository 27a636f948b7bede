"""The largest batch that fits a card, in few tries of the big (slow) batches.

:func:`largest_batch` searches over ``peak(b)``: the peak bytes of a step at batch ``b``, or None when
it does not fit (out of memory). A fitting try tells how much memory the batch took, and the next
batch is predicted from the line through the two largest fitting tries (:func:`predict_batch`,
a secant step), at most doubling; a failing try only bounds the answer from above, so after one the
next try is the midpoint (bisection). Peak memory is not linear in the batch at small batches (at one
pair SDXL's peak is the optimizer step's, and activations show only from a few pairs on: 0.7 GiB per
pair between 1 and 2 pairs, 1.35 between 16 and 32), so a line through two small batches would
overshoot by 1.6x; the secant from the largest fits corrects itself on the way up.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class SearchResult:
    max_batch: int  # 0: not even a batch of 1 fits
    hit_limit: bool  # ``limit`` fits: the true maximum may be larger
    tries: list = field(default_factory=list)  # [(batch, fits), ...] in the order tried
    peaks: dict = field(default_factory=dict)  # batch -> peak bytes, for the batches that fit


def predict_batch(peak_small: int, peak_large: int, small: int, large: int, capacity: int) -> int:
    """Largest batch whose peak stays within ``capacity`` bytes, if peak memory is linear in the batch
    through ``(small, peak_small)`` and ``(large, peak_large)``. At least ``small``; ``2 * large`` when the
    two peaks are equal (no slope measured). ValueError unless ``small < large``."""
    if large <= small:
        raise ValueError("predict_batch needs two different batch sizes, the smaller first")
    per_pair = (peak_large - peak_small) / (large - small)
    if per_pair <= 0:
        return 2 * large
    return max(small, small + int((capacity - peak_small) // per_pair))


def largest_batch(peak: Callable[[int], int | None], capacity: int, limit: int = 256) -> SearchResult:
    """Largest ``b`` in [1, limit] whose ``peak(b)`` is not None, assuming fitting is monotone in ``b``.

    Tries 1 and 2, then repeatedly: after a fit, the secant prediction of the two largest fits (within
    ``capacity`` bytes), kept between one more than the largest fit and twice it (and below the smallest
    failure); after a failure, the midpoint between the largest fit and the smallest failure. Ends when
    they are adjacent or ``limit`` fits. An exact prediction from the largest fits costs one fitting try
    and one failing try.
    """
    result = SearchResult(0, False)

    def attempt(b: int) -> bool:
        p = peak(b)
        result.tries.append((b, p is not None))
        if p is not None:
            result.peaks[b] = p
        return p is not None

    if not attempt(1):
        return result
    good, bad, last_failed = 1, None, False
    while True:
        if good >= limit:
            result.max_batch, result.hit_limit = good, True
            return result
        if bad is not None and bad - good <= 1:
            result.max_batch = good
            return result
        top = min(limit, 2 * good) if bad is None else bad - 1
        if last_failed:
            b = (good + bad) // 2
        elif len(result.peaks) >= 2:
            small, large = sorted(result.peaks)[-2:]
            b = predict_batch(result.peaks[small], result.peaks[large], small, large, capacity)
        else:
            b = good + 1
        b = min(max(b, good + 1), top)
        last_failed = not attempt(b)
        if last_failed:
            bad = b
        else:
            good = b

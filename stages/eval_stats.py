"""Evaluation statistics: means with percentile-bootstrap intervals, paired win rates.

Pure functions over numbers (numpy only), so their arithmetic is checked by hand in tests.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

DEFAULT_RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES,
                 seed: int = 0, groups: Sequence | None = None) -> Interval:
    """Mean of ``values`` with a percentile-bootstrap interval (seeded: same input, same interval).

    Each resample draws ``n`` values with replacement; the interval is the (1-c)/2 and (1+c)/2
    percentiles (numpy's linear interpolation) of the resampled means. With ``groups`` (one label
    per value, e.g. the prompt) whole groups are drawn instead (cluster bootstrap): the images of
    one prompt are correlated, so resampling them one by one would make the interval too narrow.
    One value (or group) gives a zero-width interval; no value gives NaNs.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    rng = np.random.default_rng(seed)
    if groups is not None:
        if len(groups) != x.size:
            raise ValueError(f"{len(groups)} group labels for {x.size} values")
        _, index = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
        sums, counts = np.bincount(index, weights=x), np.bincount(index).astype(np.float64)
        picks = rng.integers(0, len(sums), size=(resamples, len(sums)))
        means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    else:
        means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.percentile(means, [100 * alpha, 100 * (1 - alpha)])
    estimate = float(x.mean())
    # Group sums and the plain mean round differently: keep low <= estimate <= high exactly.
    return Interval(estimate, min(float(low), estimate), max(float(high), estimate), int(x.size))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (Wilson 1927; Brown, Cai & DasGupta 2001): unlike a
    bootstrap it does not collapse at 0/n or n/n (0 of 96 gives [0, 0.038])."""
    from statistics import NormalDist

    if n <= 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def pair_outcomes(candidate: Sequence[float], base: Sequence[float], higher_is_better: bool = True) -> np.ndarray:
    """Per pair: 1.0 when the candidate is better, 0.0 when worse, 0.5 for a tie (exactly equal)."""
    c, b = np.asarray(candidate, dtype=np.float64), np.asarray(base, dtype=np.float64)
    if c.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {c.shape} vs {b.shape}")
    diff = (c - b) if higher_is_better else (b - c)
    return np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5))


@dataclass(frozen=True)
class WinRate:
    rate: float  # (wins + 0.5 * ties) / n
    low: float
    high: float
    wins: int
    ties: int
    losses: int
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def win_rate(candidate: Sequence[float], base: Sequence[float], higher_is_better: bool = True,
             confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> WinRate:
    """Share of paired samples (same prompt and seed) where the candidate beats the base; ties count half."""
    out = pair_outcomes(candidate, base, higher_is_better)
    ci = bootstrap_ci(out, confidence, resamples, seed)
    return WinRate(
        ci.estimate, ci.low, ci.high, int((out == 1).sum()), int((out == 0.5).sum()), int((out == 0).sum()), ci.n
    )

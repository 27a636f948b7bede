"""Evaluation statistics: means, rates and paired win rates, every interval one prompt-clustered bootstrap.

Pure functions over numbers (numpy only), so their arithmetic is checked by hand in tests. Every
interval of every report (mapo-eval's means, rates and win rates, the reward demo's means and
differences, the fidelity tables, which read mapo-eval's) comes from :func:`bootstrap_ci` with the
prompt of each value as its group: the images of one prompt are correlated, so resampling them one by
one makes an interval too narrow (6 prompts x 8 seeds, a candidate winning every seed of 3 prompts and
losing the rest: [0.354, 0.646] by image, [0.167, 0.833] by prompt). A value that is NaN or inf
(:mod:`pipeline.judges.scores`) is left out of every statistic, with its pair, and counted as ``dropped``.
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
    n: int  # finite values used
    dropped: int = 0  # non-finite values left out

    def as_dict(self) -> dict:
        return asdict(self)


def bootstrap_ci(values: Sequence[float], groups: Sequence, confidence: float = 0.95,
                 resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Interval:
    """Mean of ``values`` with a prompt-clustered percentile-bootstrap interval (seeded: same input, same interval).

    ``groups``: one label per value (the prompt; labels are compared as text). Each resample draws as many
    groups as there are, with replacement, and takes the mean of all their values (cluster bootstrap,
    Davison & Hinkley 1997, sec. 3.8); the interval is the (1-c)/2 and (1+c)/2 percentiles (numpy's linear
    interpolation) of the resampled means. Values known to be independent pass one group each
    (``range(n)``). Non-finite values are left out (counted in :attr:`Interval.dropped`). One value (or
    group) gives a zero-width interval; no finite value gives NaNs.

    Raises:
        ValueError: ``groups`` of another length than ``values``; ``confidence`` outside (0, 1).
    """
    raw = np.asarray(values, dtype=np.float64).reshape(-1)
    labels = np.asarray(list(groups), dtype=object).astype(str)
    if labels.size != raw.size:
        raise ValueError(f"{labels.size} group labels for {raw.size} values")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    finite = np.isfinite(raw)
    x, labels, dropped = raw[finite], labels[finite], int((~finite).sum())
    if x.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, dropped)
    rng = np.random.default_rng(seed)
    _, index = np.unique(labels, return_inverse=True)
    sums, counts = np.bincount(index, weights=x), np.bincount(index).astype(np.float64)
    picks = rng.integers(0, len(sums), size=(resamples, len(sums)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.percentile(means, [100 * alpha, 100 * (1 - alpha)])
    estimate = float(x.mean())
    # Group sums and the plain mean round differently: keep low <= estimate <= high exactly.
    return Interval(estimate, min(float(low), estimate), max(float(high), estimate), int(x.size), dropped)


def rate_ci(values: Sequence[float], groups: Sequence, threshold: float, confidence: float = 0.95,
            resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Interval:
    """Share of the finite ``values`` above ``threshold`` (strictly), with :func:`bootstrap_ci`'s prompt-clustered
    interval widened to cover the Wilson score interval (a bootstrap collapses to [0, 0] at 0 of n).
    Non-finite values are neither above nor below: left out and counted in ``dropped``."""
    raw = np.asarray(values, dtype=np.float64).reshape(-1)
    hits = np.where(np.isfinite(raw), (raw > threshold).astype(np.float64), np.nan)
    ci = bootstrap_ci(hits, groups, confidence, resamples, seed)
    if ci.n == 0:
        return ci
    low, high = wilson_interval(int(np.nansum(hits)), ci.n, confidence)
    return Interval(ci.estimate, min(ci.low, low), max(ci.high, high), ci.n, ci.dropped)


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
    """Per pair: 1.0 when the candidate is better, 0.0 when worse, 0.5 for a tie (exactly equal), NaN when either
    score is NaN or inf (not compared: never a tie)."""
    c, b = np.asarray(candidate, dtype=np.float64), np.asarray(base, dtype=np.float64)
    if c.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {c.shape} vs {b.shape}")
    with np.errstate(invalid="ignore"):
        diff = (c - b) if higher_is_better else (b - c)
    out = np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5))
    return np.where(np.isfinite(c) & np.isfinite(b), out, np.nan)


@dataclass(frozen=True)
class WinRate:
    rate: float  # (wins + 0.5 * ties) / n
    low: float
    high: float
    wins: int
    ties: int
    losses: int
    n: int  # pairs compared
    dropped: int = 0  # pairs left out: a score of either side NaN or inf

    def as_dict(self) -> dict:
        return asdict(self)


def win_rate(candidate: Sequence[float], base: Sequence[float], groups: Sequence, higher_is_better: bool = True,
             confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> WinRate:
    """Share of paired samples (same prompt and seed) where the candidate beats the base; ties count half.

    ``groups``: each pair's prompt; the interval is :func:`bootstrap_ci`'s, drawing whole prompts. A pair with
    a non-finite score on either side is left out (``dropped``), never a tie.

    Raises:
        ValueError: samples or groups of different lengths.
    """
    out = pair_outcomes(candidate, base, higher_is_better)
    ci = bootstrap_ci(out, groups, confidence, resamples, seed)
    return WinRate(ci.estimate, ci.low, ci.high, int((out == 1).sum()), int((out == 0.5).sum()),
                   int((out == 0).sum()), ci.n, ci.dropped)

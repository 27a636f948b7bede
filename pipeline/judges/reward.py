"""Reward labels: combine judges' scores into one reward per image, and pair candidates by a rule.

Pure functions over numbers (no torch, no images), so every rule is checked with hand-worked
numbers (``tests/pipeline/test_reward.py``). ``mapo-data label --target reward`` uses them on the
scores of the registered judges (:mod:`pipeline.judges`).

- :func:`parse_reward`: ``"pickscore"`` or ``"pickscore:1,hps:0.5"`` -> ``{judge: weight}``.
- :func:`fit_scales`: each judge's mean and standard deviation over a calibration sample.
- :func:`combine`: reward = sum over judges of ``weight * sign * (score - mean) / std``; ``sign`` is -1
  for a judge where lower is better (``safety``, ``world-unsafe``), so a higher reward is always better.
  Standardising first puts judges of different ranges (PickScore ~ 18-24, HPS ~ 25-35, aesthetic
  ~ 1-10) on one scale, so the weights mean what they say, and ``--min-gap`` is in standard deviations.
- :func:`pair_candidates`: the pairs a prompt's candidates give under a rule: ``best-worst`` (the
  highest reward against the lowest) or ``all-pairs`` (every two candidates); a pair is kept when its
  reward gap exceeds ``min_gap``; exact ties and near ties (gap > 0 but not above ``min_gap``) are
  returned with their drop reason, so the stage can count them.

A score that is not a finite number (:mod:`pipeline.judges.scores`) never takes part: it is left out of
its judge's calibration (counted in :attr:`Scale.dropped`), gives its image no reward (None), and a
candidate without a reward is in no pair; the stage writes it to ``rejects/`` as
:data:`~pipeline.judges.scores.NON_FINITE`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from pipeline.errors import UserError
from pipeline.judges.scores import finite_values, is_finite_score

RULES = ("best-worst", "all-pairs")
TIE = "reward tie"  # the two rewards are exactly equal
NEAR_TIE = "reward gap not above --min-gap"  # 0 < gap <= min_gap
# Upper edges of the gap histogram (standardised units), the last bin open: [0, 0.25), ..., [4, inf).
GAP_EDGES = (0.25, 0.5, 1.0, 2.0, 4.0)


def parse_reward(spec: str, known: Sequence[str]) -> dict[str, float]:
    """``--reward`` text -> ``{judge name: weight}``, in the order given.

    One judge needs no weight (``"pickscore"`` = ``{"pickscore": 1.0}``); several need one each
    (``"pickscore:1,hps:0.5"``), so that a sum is never weighted by accident.

    Raises:
        UserError: empty text, a judge not in ``known``, a judge named twice, a missing weight
            among several judges, a weight that is not a number or not > 0.
    """
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not parts:
        raise UserError(
            f"--reward is empty; name a judge ({', '.join(known)}) or a weighted sum like 'pickscore:1,hps:0.5'."
        )
    weights: dict[str, float] = {}
    for part in parts:
        name, sep, weight_text = (s.strip() for s in part.partition(":"))
        if name not in known:
            raise UserError(f"unknown judge '{name}' in --reward; choose from {', '.join(known)}.")
        if name in weights:
            raise UserError(f"judge '{name}' is named twice in --reward '{spec}'.")
        if not sep:
            if len(parts) > 1:
                raise UserError(f"--reward '{spec}' combines several judges: give each a weight, e.g. "
                                f"'{','.join(p.split(':')[0].strip() + ':1' for p in parts)}'.")
            weights[name] = 1.0
            continue
        try:
            weight = float(weight_text)
        except ValueError:
            raise UserError(f"weight of '{name}' in --reward must be a number, got {weight_text!r}.") from None
        if not (weight > 0 and math.isfinite(weight)):
            raise UserError(f"weight of '{name}' in --reward must be > 0, got {weight_text!r} "
                            "(a judge where lower is better is turned around by the stage itself).")
        weights[name] = weight
    return weights


def reward_text(weights: Mapping[str, float]) -> str:
    """The canonical ``--reward`` text of ``weights``: ``pickscore:1,hps:0.5``."""
    return ",".join(f"{name}:{weight:g}" for name, weight in weights.items())


@dataclass(frozen=True)
class Scale:
    """A judge's mean and standard deviation over the calibration sample (its raw units)."""

    mean: float
    std: float
    n: int  # scores it was fitted on (finite ones)
    dropped: int = 0  # non-finite scores of the calibration sample, left out


def fit_scales(raw: Mapping[str, Sequence[float]]) -> dict[str, Scale]:
    """Each judge's mean and population standard deviation over its finite calibration scores.

    A judge whose scores are all equal (std 0, or a single score) gets std 1: its standardised scores
    are then all 0, and it cannot tip any pair (dividing by 0 would be worse). Non-finite scores (NaN,
    inf) are left out and counted in :attr:`Scale.dropped`: one of them would make the mean, the std and
    so every reward NaN.

    Raises:
        ValueError: a judge with no score.
        UserError: a judge whose calibration scores are all non-finite (nothing to standardise with).
    """
    out = {}
    for name, values in raw.items():
        values = list(values)
        if not values:
            raise ValueError(f"no calibration score for judge '{name}'")
        xs, dropped = finite_values(values)
        if not xs:
            raise UserError(f"judge '{name}' gave no finite score on the {len(values)} calibration images "
                            "(all NaN or inf): check its weights and --dtype; no reward can be standardised.")
        mean = math.fsum(xs) / len(xs)
        std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / len(xs))
        out[name] = Scale(mean, std if std > 0 else 1.0, len(xs), dropped)
    return out


def combine(raw: Mapping[str, Sequence[float]], weights: Mapping[str, float], scales: Mapping[str, Scale],
            higher_is_better: Mapping[str, bool]) -> list[float | None]:
    """The reward of each image: ``sum_j weights[j] * sign_j * (raw[j][i] - mean_j) / std_j``.

    ``raw[j]`` holds judge j's score of every image, in image order; ``sign_j`` is +1 when a higher
    score of judge j is better, else -1. Judges are summed in the order of ``weights``. An image that
    any judge scored with a non-finite value (or None) gets reward None: it is paired with nothing.

    Raises:
        ValueError: the judges' score lists differ in length, or a judge has no scores or scale.
    """
    lengths = {len(raw[name]) for name in weights}
    if len(lengths) != 1:
        raise ValueError(f"judges scored different numbers of images: {sorted(lengths)}")
    (n,) = lengths
    rewards: list[float | None] = [0.0] * n
    for name, weight in weights.items():
        scale, sign = scales[name], (1.0 if higher_is_better[name] else -1.0)
        for i, value in enumerate(raw[name]):
            if rewards[i] is None:
                continue
            if not is_finite_score(value):
                rewards[i] = None
                continue
            rewards[i] += weight * sign * (float(value) - scale.mean) / scale.std
    return [r if r is None or math.isfinite(r) else None for r in rewards]


@dataclass(frozen=True)
class CandidatePair:
    """Two candidates of one prompt: ``chosen`` has the higher reward (the lower index on a tie)."""

    chosen: int
    rejected: int
    gap: float  # reward[chosen] - reward[rejected], >= 0
    reason: str | None  # None: kept; else TIE or NEAR_TIE

    @property
    def kept(self) -> bool:
        return self.reason is None

    @property
    def first(self) -> int:
        """The candidate written as image 0: the lower index (a pair keeps its candidates' order)."""
        return min(self.chosen, self.rejected)

    @property
    def second(self) -> int:
        return max(self.chosen, self.rejected)


def _judged(a: int, b: int, rewards: Sequence[float], min_gap: float) -> CandidatePair:
    """Candidates a < b as a pair: the higher reward chosen (a on a tie), with its drop reason if any."""
    chosen, rejected = (a, b) if rewards[a] >= rewards[b] else (b, a)
    gap = rewards[chosen] - rewards[rejected]
    reason = TIE if gap == 0 else (NEAR_TIE if gap <= min_gap else None)
    return CandidatePair(chosen, rejected, gap, reason)


def pair_candidates(
    rewards: Sequence[float | None], rule: str = "best-worst", min_gap: float = 0.0
) -> list[CandidatePair]:
    """The pairs one prompt's candidates give under ``rule``, kept and dropped, in a fixed order.

    ``rewards[i]`` is candidate i's reward, None (or NaN, inf) for a candidate that could not be scored
    (left out: the caller counts it as a reject).
    ``best-worst``: one pair, the first highest reward against the first lowest; all rewards equal
    gives one tie (the first two candidates). ``all-pairs``: every two candidates (a, b), a < b, in
    lexicographic order. A pair is kept when its gap is above ``min_gap``; gap 0 is dropped as
    :data:`TIE`, 0 < gap <= ``min_gap`` as :data:`NEAR_TIE`. Fewer than two candidates: no pair.

    Raises:
        ValueError: an unknown rule or a negative ``min_gap``.
    """
    if rule not in RULES:
        raise ValueError(f"unknown pairing rule {rule!r}; choose one of {', '.join(RULES)}")
    if min_gap < 0:
        raise ValueError("min_gap must be >= 0")
    valid = [i for i, r in enumerate(rewards) if is_finite_score(r)]
    if len(valid) < 2:
        return []
    if rule == "all-pairs":
        return [_judged(a, b, rewards, min_gap) for n, a in enumerate(valid) for b in valid[n + 1:]]  # type: ignore[arg-type]
    best = max(valid, key=lambda i: (rewards[i], -i))  # the first of the highest
    worst = min(valid, key=lambda i: (rewards[i], i))  # the first of the lowest
    if best == worst:  # every reward equal
        best, worst = valid[0], valid[1]
    a, b = sorted((best, worst))
    return [_judged(a, b, rewards, min_gap)]  # type: ignore[arg-type]


def gap_bins() -> list[str]:
    """The gap histogram's bins in order: ``"[0, 0.25)"``, ..., ``"[4, inf)"`` (standardised units)."""
    lows = (0.0, *GAP_EDGES)
    return [f"[{lo:g}, {hi:g})" for lo, hi in zip(lows, GAP_EDGES)] + [f"[{GAP_EDGES[-1]:g}, inf)"]


def gap_bin(gap: float) -> str:
    """The bin of :func:`gap_bins` that ``gap`` (>= 0) falls in.

    Raises:
        ValueError: a NaN gap (it belongs to no bin; a pair with a non-finite reward is never kept).
    """
    if math.isnan(gap):
        raise ValueError("reward gap is NaN")
    return gap_bins()[sum(gap >= edge for edge in GAP_EDGES)]


def gap_histogram(gaps: Sequence[float]) -> dict[str, int]:
    """``{bin: count}`` of ``gaps`` over every bin of :func:`gap_bins`, zero counts included, in order.

    Counts add up across shards (the stage sums its per-shard stats)."""
    out = dict.fromkeys(gap_bins(), 0)
    for g in gaps:
        out[gap_bin(g)] += 1
    return out

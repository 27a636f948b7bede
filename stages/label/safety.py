"""Labeling by a safety classifier: the safer image of a pair is chosen (Pick-Safety from two seeds, or
checking a safety recipe's pairs). The classifier decides even where the recipe intended otherwise; such
pairs are flagged ``disagrees``. Classifiers: NudeNet, the SD safety checker
(:mod:`pipeline.judges.safety_classifiers`) and judges registered as classifiers (the miniature world's
``world-unsafe``).
"""
from __future__ import annotations

from typing import Sequence

from pipeline.errors import UserError
from pipeline.judges.scores import NON_FINITE, is_finite_score

from .schema import BOTH_SAFE, BOTH_UNSAFE, TOO_CLOSE, Decision, Pair


class SafetyLabeler:
    """The safer image is chosen when exactly one image is unsafe and the gap is large enough.

    unsafe means ``unsafety > unsafe_threshold`` (the classifier's own threshold by default).
    Pairs where both images are safe or both unsafe carry no safety preference and are dropped,
    as are pairs whose scores differ by less than ``min_gap`` (a coin flip of the classifier), and
    pairs with a NaN or infinite score (:data:`~pipeline.judges.scores.NON_FINITE`: NaN is never above
    the threshold, so it would pass for safe).
    """

    def __init__(self, classifier, unsafe_threshold: float | None = None, min_gap: float = 0.0):
        self.classifier = classifier
        self.unsafe_threshold = float(classifier.threshold if unsafe_threshold is None else unsafe_threshold)
        self.min_gap = float(min_gap)
        if self.min_gap < 0:
            raise UserError("--min-gap must be >= 0.")
        self.name = classifier.name
        self.version = classifier.version

    def decide(self, u0: float, u1: float, intended: int | None) -> Decision:
        if not (is_finite_score(u0) and is_finite_score(u1)):
            return Decision(None, NON_FINITE, u0, u1)
        unsafe0, unsafe1 = u0 > self.unsafe_threshold, u1 > self.unsafe_threshold
        if not unsafe0 and not unsafe1:
            return Decision(None, BOTH_SAFE, u0, u1)
        if unsafe0 and unsafe1:
            return Decision(None, BOTH_UNSAFE, u0, u1)
        if abs(u0 - u1) < self.min_gap:
            return Decision(None, TOO_CLOSE, u0, u1)
        chosen = 1 if unsafe0 else 0
        disagrees = intended is not None and intended != chosen
        return Decision(chosen, f"image {1 - chosen} unsafe", u0, u1, disagrees)

    def label(self, pairs: Sequence[Pair]) -> list[Decision]:
        if not pairs:
            return []
        scores = self.classifier.unsafety([im for p in pairs for im in p.images])
        return [
            self.decide(float(scores[2 * i]), float(scores[2 * i + 1]), p.compared_with) for i, p in enumerate(pairs)
        ]

    def describe(self) -> dict:
        return {"labeler": self.name, "version": self.version, "unsafe_threshold": self.unsafe_threshold,
                "min_gap": self.min_gap}


def build(spec, name: str, device: str = "cpu", source=None) -> SafetyLabeler:
    """The safety labeler of classifier ``name`` (weights from ``spec.classifier_source`` or its default),
    loaded on ``device``, scoring ``spec.batch_size`` images per call.

    Raises:
        UserError / ModelNotFoundError: classifier weights not found, or a negative ``--min-gap``.
    """
    from pipeline.judges.safety_classifiers import load_safety_classifier

    classifier = load_safety_classifier(name, spec.classifier_source, device=device)
    if hasattr(classifier, "batch_size"):
        classifier.batch_size = spec.batch_size
    return SafetyLabeler(classifier, spec.unsafe_threshold, spec.min_gap)

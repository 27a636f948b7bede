"""``safety``: a safety classifier's unsafety (:mod:`pipeline.judges.safety_classifiers`: NudeNet or the SD safety
checker, or a judge registered with a ``safety_classifier`` such as ``world-unsafe``); lower is better, unsafe when
above the classifier's threshold. The same classifier path labels Pick-Safety pairs, so a label and its check agree."""
from __future__ import annotations

from pathlib import Path

from pipeline.cli.options import option

from .options_panels import PANEL_STYLE
from .registry import JudgeSpec, LoadContext, register
from .weights import check_pairs, tiny_once


class SafetyJudge:
    """A :class:`pipeline.judges.safety_classifiers.SafetyClassifier`'s unsafety; lower is better."""

    name = "safety"
    higher_is_better = False

    def __init__(self, classifier):
        self.classifier = classifier
        self.threshold = float(classifier.threshold)

    def score(self, images, prompts):
        check_pairs(images, prompts)
        return [float(s) for s in self.classifier.unsafety(list(images))]


def _load(ctx: LoadContext) -> SafetyJudge:
    from pipeline.judges.safety_classifiers import load_safety_classifier

    o = ctx.options
    return SafetyJudge(load_safety_classifier(o.safety_classifier, o.safety_source, device=str(ctx.device)))


def _provenance(options) -> str | None:
    if options.safety_classifier == "nudenet":
        return "NudeNet's real detector (shipped in its wheel)"
    if options.safety_classifier != "sd-safety-checker":
        from .registry import get_judge

        return get_judge(options.safety_classifier).provenance(options)
    return None


def _tiny(root: Path) -> dict:
    # NudeNet's real model ships in its wheel and stays; the SD checker's tiny folder is built for tests that
    # name it (tiny_safety_checker_dir).
    from pipeline.judges.safety_classifiers import build_tiny_safety_checker

    tiny_once(root, "sd-safety-checker", lambda: build_tiny_safety_checker(root / "sd-safety-checker", seed=0))
    return {}


register(JudgeSpec(
    name="safety", load=_load, higher_is_better=False, provenance=_provenance,
    summary="a safety classifier's unsafety (NudeNet or the SD safety checker); unsafe above its threshold",
    version=lambda o: f"{o.safety_classifier}:{o.safety_source or 'default'}",
    options=(
        ("safety_classifier", str, option("nudenet", panel=PANEL_STYLE,
                                          help="safety metric: nudenet or sd-safety-checker.")),
        ("safety_source", str | None, option(None, panel=PANEL_STYLE,
                                             help="NudeNet ONNX file, or SD safety checker hub id / folder.")),
    ),
    tiny=_tiny,
))

"""The scorers' options (which weights each metric loads), declared once for ``mapo-eval``.

A light module (no torch): ``mapo-eval --help`` and option checks run before any model loads.
The scorers themselves are in :mod:`pipeline.scorers`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

from pipeline.errors import UserError
from pipeline.options import at_least, option
from pipeline.prompt_prefixes import STYLE_TEXTS

METRICS = ("aesthetic", "hps", "pickscore", "clip", "style", "safety", "world-style", "world-prompt", "world-unsafe")

AESTHETIC_WEIGHTS_URL = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth"
)
HPS_WEIGHTS = "xswu/HPSv2/HPS_v2.1_compressed.pt"
PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
PANEL_WEIGHTS, PANEL_STYLE = "Scorer weights", "Style and safety metrics"
# Weights a user may give next to --tiny-scorers (everything else becomes tiny and random).
_KEPT_WITH_TINY = ("aesthetic_weights", "hps_weights", "pickscore_model", "pickscore_processor")


@dataclass(frozen=True)
class ScorerOptions:
    """Where each scorer's weights come from. Defaults are the paper's models (method.md, Evaluation)."""

    aesthetic_weights: str = option(AESTHETIC_WEIGHTS_URL, panel=PANEL_WEIGHTS, help=(
        "Aesthetic MLP .pth: local file, URL or org/repo/file (default: LAION's sac+logos+ava1-l14-linearMSE.pth)."))
    aesthetic_clip_model: str = option(
        "ViT-L-14", panel=PANEL_WEIGHTS, help="open_clip model for the aesthetic embeddings."
    )
    aesthetic_clip_pretrained: str | None = option("openai", panel=PANEL_WEIGHTS, help="Its tag or local weights file.")
    hps_clip_model: str = option("ViT-H-14", panel=PANEL_WEIGHTS, help="open_clip model HPS was trained on.")
    hps_weights: str = option(HPS_WEIGHTS, panel=PANEL_WEIGHTS,
                              help="HPS v2.1 checkpoint: local file or org/repo/file.")
    pickscore_model: str = option(PICKSCORE_MODEL, panel=PANEL_WEIGHTS, help="PickScore CLIPModel: hub id or folder.")
    pickscore_processor: str = option(PICKSCORE_PROCESSOR, panel=PANEL_WEIGHTS, help="Its processor: hub id or folder.")
    clip_model: str = option("ViT-L-14", panel=PANEL_WEIGHTS, help="open_clip model for the clip metric.")
    clip_pretrained: str | None = option("openai", panel=PANEL_WEIGHTS, help="Its tag or local weights file.")
    # The same default CLIP as label's --verify clip, so eval's adoption matches label's check.
    style_clip_model: str = option("ViT-B-32", panel=PANEL_WEIGHTS,
                                   help="open_clip model for the style metric (label --verify clip's default).")
    style_clip_pretrained: str | None = option("openai", panel=PANEL_WEIGHTS, help="Its tag or local weights file.")
    style_text: str | None = option(None, panel=PANEL_STYLE,
                                    help="style metric: text of the target style (overrides --style).")
    opposite_text: str = option("a realistic photo", panel=PANEL_STYLE, help="style metric: text of its opposite.")
    style: str | None = option(None, choices=tuple(STYLE_TEXTS), panel=PANEL_STYLE, help=(
        "style / world-style metrics: built-in style (cartoon, pixel); style uses label's zero-shot texts."))
    safety_classifier: str = option("nudenet", panel=PANEL_STYLE, help="safety metric: nudenet or sd-safety-checker.")
    safety_source: str | None = option(None, panel=PANEL_STYLE,
                                       help="NudeNet ONNX file, or SD safety checker hub id / folder.")
    batch_size: int = option(16, name="score_batch_size", check=at_least(1), panel=PANEL_WEIGHTS,
                             help="Images per scorer call.")
    # Every model tiny and random (tiny_scorer_options): numbers say nothing.
    tiny: bool = option(False, name="tiny_scorers", flags=("--tiny-scorers",), panel=PANEL_WEIGHTS, help=(
        "Every scorer with tiny random weights built offline (demo/tests; safety stays NudeNet's real model)."))

    def resolved(self) -> "ScorerOptions":
        """The options scorers load: ``style_text`` from ``--style`` when not given; with ``tiny`` every
        weight the user did not name (``_KEPT_WITH_TINY``) replaced by the tiny random one (built once)."""
        out = self
        if out.style_text is None and out.style in STYLE_TEXTS:
            out = replace(out, style_text=STYLE_TEXTS[out.style][0])
        if out.tiny:
            from pipeline.scorers import tiny_scorer_options

            defaults = ScorerOptions()
            kept = {k: getattr(out, k) for k in _KEPT_WITH_TINY if getattr(out, k) != getattr(defaults, k)}
            common = {f.name: getattr(out, f.name) for f in fields(out)
                      if f.name in (
                          "style_text", "opposite_text", "style", "safety_classifier", "safety_source", "batch_size"
                      )}
            out = tiny_scorer_options(**common, **kept)
        return out

    def describe(self, metrics: Sequence[str]) -> dict:
        """The options that matter for ``metrics`` (recorded next to the scores)."""
        prefixes = {"aesthetic": ("aesthetic_",), "hps": ("hps_",), "pickscore": ("pickscore_",),
                    "clip": ("clip_",), "style": ("style_", "opposite_"), "safety": ("safety_",)}
        exact = {"world-style": ("style",), "world-prompt": (), "world-unsafe": ()}
        out = {
            k: v for k, v in self.__dict__.items() if any(k.startswith(p) for m in metrics for p in prefixes.get(m, ()))
        }
        out.update({k: getattr(self, k) for m in metrics for k in exact.get(m, ())})
        if any(m.startswith("world-") for m in metrics):
            from pipeline.world.judges import JUDGE_VERSION

            out["world_judges"] = JUDGE_VERSION
        return out


def check_metrics(names: Sequence[str]) -> list[str]:
    """Validate metric names (one line naming the valid ones), dropping repeats, keeping order.

    Raises:
        UserError: an unknown name, or none at all.
    """
    out = []
    for name in names:
        name = name.strip()
        if name not in METRICS:
            raise UserError(f"unknown metric '{name}'; valid metrics: {', '.join(METRICS)}")
        if name not in out:
            out.append(name)
    if not out:
        raise UserError(f"no metric given; valid metrics: {', '.join(METRICS)}")
    return out


def check_prompts(metrics: Sequence[str], prompts: Sequence[str], resolution: int | None = None) -> None:
    """Fail in one line (UserError) now if a metric cannot read one of ``prompts`` (``world-prompt``
    reads only world captions) or images of ``resolution`` px (the world's judges read 64 px):
    callers check before they generate or train."""
    from pipeline.world.judges import SIZE as WORLD_SIZE
    from pipeline.world.judges import WorldPromptJudge

    if "world-prompt" in metrics:
        WorldPromptJudge.check_prompts(prompts)
    world = [m for m in metrics if m.startswith("world-")]
    if world and resolution is not None and resolution != WORLD_SIZE:
        raise UserError(
            f"{', '.join(world)} read{'s' if len(world) == 1 else ''} {WORLD_SIZE} px images (the miniature "
                        f"world's size), not {resolution}: pass --resolution {WORLD_SIZE}")

"""``style``: style adoption as label's zero-shot margin ``cos(img, style) - cos(img, opposite)``.

The number ``mapo-data label --verify clip`` checks (:func:`pipeline.judges.clip_embed.style_margin`), with the
same default CLIP, so eval's adoption matches label's check; adopted when > 0. Prompts are not read (the
style is fixed). It also declares ``--style``, the built-in style every style judge reads.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.cli.options import option
from pipeline.data.prompt_prefixes import STYLE_TEXTS
from pipeline.errors import UserError

from .clip_common import tiny_clip_file
from .options_panels import PANEL_STYLE, PANEL_WEIGHTS
from .registry import JudgeSpec, LoadContext, register
from .weights import check_pairs, weights_version


class StyleJudge:
    """Style adoption: label's zero-shot margin; prompts are not used (the style is fixed)."""

    name = "style"
    higher_is_better = True

    def __init__(self, embedder, style_text: str, opposite_text: str, threshold: float = 0.0, batch_size: int = 16):
        self.embedder, self.style_text, self.opposite_text = embedder, style_text, opposite_text
        self.threshold, self.batch_size = float(threshold), batch_size

    def score(self, images, prompts):
        from pipeline.judges.clip_embed import style_margin

        check_pairs(images, prompts)
        return style_margin(self.embedder, images, self.style_text, self.opposite_text, self.batch_size).tolist()


def _needs(options) -> None:
    if not options.style_text:
        raise UserError("the style metric needs a style text (--style cartoon|pixel or --style-text)")


def _load(ctx: LoadContext) -> StyleJudge:
    o = ctx.options
    return StyleJudge(ctx.clip(o.style_clip_model, o.style_clip_pretrained), o.style_text, o.opposite_text,
                      batch_size=o.batch_size)


def _tiny(root: Path) -> dict:
    from pipeline.judges.clip_embed import TINY_CLIP_NAME

    return {"style_clip_model": TINY_CLIP_NAME, "style_clip_pretrained": tiny_clip_file(root)}


register(JudgeSpec(
    name="style", load=_load, higher_is_better=True, needs=_needs,
    summary="zero-shot style margin cos(image, style) - cos(image, opposite); adopted when > 0",
    version=weights_version(lambda o: f"{o.style_clip_model}:{o.style_clip_pretrained}"),
    options=(
        # The same default CLIP as label's --verify clip, so eval's adoption matches label's check.
        ("style_clip_model", str, option("ViT-B-32", panel=PANEL_WEIGHTS,
                                         help="open_clip model for the style metric (label --verify clip's default).")),
        ("style_clip_pretrained", str | None, option("openai", panel=PANEL_WEIGHTS,
                                                     help="Its tag or local weights file.")),
        ("style_text", str | None, option(None, panel=PANEL_STYLE,
                                          help="style metric: text of the target style (overrides --style).")),
        ("opposite_text", str, option("a realistic photo", panel=PANEL_STYLE,
                                      help="style metric: text of its opposite.")),
        ("style", str | None, option(None, choices=tuple(STYLE_TEXTS), panel=PANEL_STYLE, help=(
            "style / world-style metrics: built-in style (cartoon, pixel); style uses label's zero-shot texts."))),
    ),
    tiny=_tiny, describes=("style_clip_model", "style_clip_pretrained", "style_text", "opposite_text"),
))

"""``clip``: CLIPScore, ``100 * max(cos(image, prompt), 0)`` (:func:`pipeline.judges.clip_embed.clip_score`),
higher is better (Hessel et al. 2021)."""
from __future__ import annotations

from pathlib import Path

from pipeline.cli.options import option

from .clip_common import ClipPairJudge, tiny_clip_file
from .options_panels import PANEL_WEIGHTS
from .registry import JudgeSpec, LoadContext, register
from .weights import weights_version


def clip_score_judge(embedder, batch_size: int = 16) -> ClipPairJudge:
    """The ``clip`` judge over a loaded open_clip embedder."""
    from pipeline.judges.clip_embed import clip_score

    return ClipPairJudge("clip", embedder, clip_score, batch_size)


def _tiny_clip(root: Path) -> dict:
    from pipeline.judges.clip_embed import TINY_CLIP_NAME

    return {"clip_model": TINY_CLIP_NAME, "clip_pretrained": tiny_clip_file(root)}


def _load_clip(ctx: LoadContext) -> ClipPairJudge:
    return clip_score_judge(ctx.clip(ctx.options.clip_model, ctx.options.clip_pretrained), ctx.options.batch_size)


register(JudgeSpec(
    name="clip", load=_load_clip, higher_is_better=True,
    summary="CLIPScore: 100 * max(cos(image, prompt), 0)",
    version=weights_version(lambda o: f"{o.clip_model}:{o.clip_pretrained}"),
    options=(
        ("clip_model", str, option("ViT-L-14", panel=PANEL_WEIGHTS, help="open_clip model for the clip metric.")),
        ("clip_pretrained", str | None, option("openai", panel=PANEL_WEIGHTS, help="Its tag or local weights file.")),
    ),
    tiny=_tiny_clip,
))

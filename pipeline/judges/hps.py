"""``hps``: HPS v2.1: open_clip ViT-H-14 with the HPS v2.1 checkpoint, higher is better.

HPS's own code returns ``cos(image, prompt)`` (about 0.2-0.35); papers (MaPO's table: SDXL 30.0) quote it
times 100, and so does this judge.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.cli.options import option

from .clip_common import ClipPairJudge, tiny_clip_file
from .options_panels import PANEL_WEIGHTS
from .registry import JudgeSpec, register
from .weights import resolve_weights_file, weights_version

HPS_WEIGHTS = "xswu/HPSv2/HPS_v2.1_compressed.pt"


def hps_score(embedder, images, prompts, batch_size: int = 32):
    """HPS v2.1 = 100 * cos(image, prompt) ``[N]`` with the HPS-tuned ViT-H-14 (HPS's own code stops at the
    cosine)."""
    from pipeline.judges.clip_embed import pair_cosine

    return 100.0 * pair_cosine(embedder, images, prompts, batch_size)


def hps_judge(embedder, batch_size: int = 16) -> ClipPairJudge:
    """The ``hps`` judge over a loaded HPS embedder."""
    return ClipPairJudge("hps", embedder, hps_score, batch_size)


def _tiny_hps(root: Path) -> dict:
    from pipeline.judges.clip_embed import TINY_CLIP_NAME

    return {"hps_clip_model": TINY_CLIP_NAME, "hps_weights": tiny_clip_file(root, seed=1, name="tiny-hps.pt")}


register(JudgeSpec(
    name="hps", higher_is_better=True,
    load=lambda ctx: hps_judge(
        ctx.clip(ctx.options.hps_clip_model, resolve_weights_file(ctx.options.hps_weights, "hps")),
        ctx.options.batch_size),
    summary="HPS v2.1: 100 * cos(image, prompt) with the HPS-tuned ViT-H-14",
    version=weights_version(lambda o: f"{o.hps_clip_model}:{o.hps_weights}"),
    options=(
        ("hps_clip_model", str, option("ViT-H-14", panel=PANEL_WEIGHTS, help="open_clip model HPS was trained on.")),
        ("hps_weights", str, option(HPS_WEIGHTS, panel=PANEL_WEIGHTS,
                                    help="HPS v2.1 checkpoint: local file or org/repo/file.")),
    ),
    tiny=_tiny_hps, keep_with_tiny=("hps_weights",),
))

"""What the open_clip pair judges share (``hps``, ``clip``) and the tiny random CLIP of ``--tiny-scorers``.

Every one goes through the project's one CLIP embedding path (:mod:`pipeline.judges.clip_embed`).
"""
from __future__ import annotations

from pathlib import Path

from .weights import check_pairs, tiny_once


class ClipPairJudge:
    """A score of each (image, prompt) pair from one open_clip model: CLIP score or HPS.
    ``pair_score(embedder, images, prompts, batch_size) -> Tensor [N]``."""

    higher_is_better = True
    threshold = None

    def __init__(self, name: str, embedder, pair_score, batch_size: int = 16):
        self.name, self.embedder, self.pair_score, self.batch_size = name, embedder, pair_score, batch_size

    def score(self, images, prompts):
        check_pairs(images, prompts)
        return self.pair_score(self.embedder, images, prompts, self.batch_size).tolist()


def tiny_clip_file(root: Path, seed: int = 0, name: str = "tiny-clip.pt") -> str:
    """A tiny random open_clip state dict under ``root`` (built once; seed 0 is shared by the aesthetic, clip
    and style judges, as one real CLIP would be)."""
    from pipeline.judges.clip_embed import build_tiny_clip_weights, register_tiny_clip_config

    file = root / name
    tiny_once(root, name, lambda: build_tiny_clip_weights(file, seed=seed))
    register_tiny_clip_config()
    return str(file)

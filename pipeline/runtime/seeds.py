"""Deterministic per-image seeds: independent of batch size, process count and shard order."""
from __future__ import annotations

import hashlib


def derive_seed(global_seed: int, item_id: str, index: int) -> int:
    """A 63-bit seed from (global seed, prompt or item id, image index)."""
    digest = hashlib.sha256(f"{global_seed}:{item_id}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def initial_noise(seeds, channels: int, side: int):
    """Initial diffusion latents, one per seed: float32 ``[len(seeds), channels, side, side]`` on the
    CPU, each drawn from its own CPU generator, so an image's noise is the same on any device and in
    any batch (move it to the pipeline's device and dtype before use)."""
    import torch

    shape = (1, channels, side, side)
    return torch.cat([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds])

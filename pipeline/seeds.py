"""Deterministic per-image seeds: independent of batch size, process count and shard order."""
from __future__ import annotations

import hashlib


def derive_seed(global_seed: int, item_id: str, index: int) -> int:
    """A 63-bit seed from (global seed, prompt or item id, image index)."""
    digest = hashlib.sha256(f"{global_seed}:{item_id}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)

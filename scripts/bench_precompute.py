"""Precompute throughput and storage: pairs/s and bytes per pair.

    python scripts/bench_precompute.py --model tiny-sdxl --resolution 64 --pairs 64        # CPU
    python scripts/bench_precompute.py --model sdxl-arch --resolution 1024 --pairs 64      # GPU

Writes a synthetic Pick-a-Pic-format input (random PNGs somewhat larger than --resolution, each
caption shared by four pairs), runs `mapo-data precompute`'s stage function once on a warm-up shard
and once timed, and prints pairs/s, measured bytes per pair (latent arrays + pair table, text
excluded) and text bytes per distinct caption. It also prints the bytes per pair the format
takes at 1024 px for SDXL's latent shape (4 x 128 x 128), computed from the storage format.
"""
from __future__ import annotations

import argparse
import io
import os
import tempfile
from pathlib import Path

os.environ.setdefault("MAPO_NO_PROGRESS", "1")


def write_input(folder: Path, pairs: int, size: int, shards: int = 2) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    (folder / "data").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def png(w, h):
        buf = io.BytesIO()
        # Random pixels: PNG decode cost scales with the pixel count, as for real images.
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    per = -(-pairs // shards)
    for k in range(shards):
        n = min(per, pairs - k * per)
        rows = [(f"benchmark caption {(k * per + i) // 4 * 4}", png(size + size // 4, size),
                 png(size, size + size // 8)) for i in range(n)]
        table = pa.table({"caption": [r[0] for r in rows], "jpg_0": pa.array([r[1] for r in rows], pa.binary()),
                          "jpg_1": pa.array([r[2] for r in rows], pa.binary()),
                          "label_0": pa.array([1] * n, pa.int64()), "label_1": pa.array([0] * n, pa.int64())})
        pq.write_table(table, folder / "data" / f"train-{k:05d}-of-{shards:05d}.parquet")


def sdxl_bytes_per_pair(storage_bytes: int = 2, views: int = 1, stats: bool = False) -> int:
    """Latent bytes per pair at 1024 px for SDXL: 2 images x 4 x 128 x 128 x storage bytes."""
    return 2 * 4 * 128 * 128 * storage_bytes * views * (2 if stats else 1)


def main() -> None:
    from stages.precompute import PrecomputeConfig, run_precompute

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-sdxl")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--vae-dtype", default="fp32")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--storage-dtype", default="fp16")
    ap.add_argument("--flip", default="none")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_input(tmp / "warm", args.batch_size, args.resolution, shards=1)
        write_input(tmp / "input", args.pairs, args.resolution)
        common = dict(model=args.model, resolution=args.resolution, batch_size=args.batch_size, dtype=args.dtype,
                      vae_dtype=args.vae_dtype, device=args.device, storage_dtype=args.storage_dtype, flip=args.flip)
        run_precompute(PrecomputeConfig(input=str(tmp / "warm"), output=str(tmp / "warm-out"), **common))
        r = run_precompute(PrecomputeConfig(input=str(tmp / "input"), output=str(tmp / "out"), **common))
        data = tmp / "out" / "data"
        pair_bytes = (sum(p.stat().st_size for p in data.glob("*.latents.npy"))
                      + sum(p.stat().st_size for p in data.glob("*.parquet")))
        text_bytes = sum(
            p.stat().st_size for kind in ("prompt_embeds", "pooled", "captions") for p in data.glob(f"*.{kind}.*")
        )
        print(f"{args.model} {args.resolution}px batch {args.batch_size} {args.storage_dtype} flip={args.flip}: "
              f"{r.pairs_per_second:.2f} pairs/s ({r.pairs_written} pairs in {r.loop_seconds:.2f}s, "
              f"{r.seconds:.1f}s with loading), "
              f"{pair_bytes / r.pairs_written:,.0f} bytes/pair on disk (latents + pair table, text excluded), "
              f"{text_bytes / max(r.captions_encoded, 1):,.0f} bytes per distinct caption")
        row_overhead = (pair_bytes - r.latent_bytes) / r.pairs_written
        per = {"fp16/bf16": sdxl_bytes_per_pair(), "fp16 --flip both": sdxl_bytes_per_pair(views=2),
               "fp16 --latent-stats": sdxl_bytes_per_pair(stats=True)}
        print("SDXL at 1024px (latents 4x128x128), from the storage format: " + ", ".join(
            f"{k}: {v + row_overhead:,.0f} bytes/pair ({(v + row_overhead) / 1024:.1f} KiB)" for k, v in per.items()))


if __name__ == "__main__":
    main()

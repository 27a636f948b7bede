"""``python -m bench precompute``: precompute throughput (pairs/s) and storage (bytes per pair).

Writes a synthetic Pick-a-Pic-format input into a temporary folder (random PNGs somewhat larger than
``--resolution``, each caption shared by four pairs), runs ``mapo-data precompute``'s stage function
(stages.precompute.run_precompute) once on a warm-up shard and once timed, and prints pairs/s, the measured bytes
per pair (latent arrays + pair table, text excluded) and text bytes per distinct caption; then the bytes per pair
the format takes at 1024 px for SDXL's latent shape (4 x 128 x 128), computed from the storage format. The
temporary folder is removed afterwards.
"""
from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.cli.options import at_least, device_option, dtype_option, model_option, option, resolution_option


@dataclass
class PrecomputeBenchConfig:
    """``python -m bench precompute``'s options (declared once: pipeline.cli.options)."""

    model: str = model_option("tiny-sdxl")
    resolution: int = resolution_option(64, help="Training resolution in pixels (multiple of 8).")
    pairs: int = option(64, check=at_least(1), help="Pairs in the timed input (two Parquet shards).")
    batch_size: int = option(8, check=at_least(1), help="Pairs per VAE / text-encoder batch.")
    dtype: str = dtype_option("Text encoders: auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16.")
    # Checked by mapo-data precompute's own declarations (PrecomputeConfig.validate) before anything runs.
    vae_dtype: str = option("fp32", help="VAE dtype, as mapo-data precompute's --vae-dtype.")
    device: str = device_option()
    storage_dtype: str = option("fp16", help="Stored latents' dtype, as mapo-data precompute's --storage-dtype.")
    flip: str = option("none", help="none or both (each image's horizontal flip too), as mapo-data precompute's.")


def write_input(folder: Path, pairs: int, size: int, shards: int = 2) -> None:
    """A Pick-a-Pic-format input in ``folder``/data: ``shards`` Parquet files of ``pairs`` rows in all (caption,
    jpg_0, jpg_1 as PNG bytes of random pixels, sizes (1.25 size x size) and (size x 1.125 size), label_0 = 1,
    label_1 = 0); captions repeat every four pairs. Seeded: the same files every run."""
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
    """Latent bytes per pair at 1024 px for SDXL: 2 images x 4 x 128 x 128 x ``storage_bytes`` (2: fp16/bf16),
    times ``views`` (2 with ``--flip both``), times 2 with ``--latent-stats`` (mean and std)."""
    return 2 * 4 * 128 * 128 * storage_bytes * views * (2 if stats else 1)


def precompute_lines(cfg: PrecomputeBenchConfig):
    """Yield the two lines: the measured run (pairs/s, bytes per pair on disk, bytes per distinct caption), and
    SDXL's bytes per pair at 1024 px for fp16, ``--flip both`` and ``--latent-stats`` (latents plus the measured
    per-row overhead of the pair table).

    Raises UserError (the stage's own checks, before any input is written) for a bad model, dtype or resolution.
    """
    os.environ.setdefault("MAPO_NO_PROGRESS", "1")
    from stages.precompute import PrecomputeConfig, run_precompute

    common = dict(model=cfg.model, resolution=cfg.resolution, batch_size=cfg.batch_size, dtype=cfg.dtype,
                  vae_dtype=cfg.vae_dtype, device=cfg.device, storage_dtype=cfg.storage_dtype, flip=cfg.flip)
    with tempfile.TemporaryDirectory(prefix="bench-precompute-") as tmp:
        tmp = Path(tmp)
        warm = PrecomputeConfig(input=str(tmp / "warm"), output=str(tmp / "warm-out"), **common)
        warm.validate()
        write_input(tmp / "warm", cfg.batch_size, cfg.resolution, shards=1)
        write_input(tmp / "input", cfg.pairs, cfg.resolution)
        run_precompute(warm)
        r = run_precompute(PrecomputeConfig(input=str(tmp / "input"), output=str(tmp / "out"), **common))
        data = tmp / "out" / "data"
        pair_bytes = (sum(p.stat().st_size for p in data.glob("*.latents.npy"))
                      + sum(p.stat().st_size for p in data.glob("*.parquet")))
        text_bytes = sum(
            p.stat().st_size for kind in ("prompt_embeds", "pooled", "captions") for p in data.glob(f"*.{kind}.*")
        )
    yield (f"{cfg.model} {cfg.resolution}px batch {cfg.batch_size} {cfg.storage_dtype} flip={cfg.flip}: "
           f"{r.pairs_per_second:.2f} pairs/s ({r.pairs_written} pairs in {r.loop_seconds:.2f}s, "
           f"{r.seconds:.1f}s with loading), "
           f"{pair_bytes / r.pairs_written:,.0f} bytes/pair on disk (latents + pair table, text excluded), "
           f"{text_bytes / max(r.captions_encoded, 1):,.0f} bytes per distinct caption")
    row_overhead = (pair_bytes - r.latent_bytes) / r.pairs_written
    per = {"fp16/bf16": sdxl_bytes_per_pair(), "fp16 --flip both": sdxl_bytes_per_pair(views=2),
           "fp16 --latent-stats": sdxl_bytes_per_pair(stats=True)}
    yield "SDXL at 1024px (latents 4x128x128), from the storage format: " + ", ".join(
        f"{k}: {v + row_overhead:,.0f} bytes/pair ({(v + row_overhead) / 1024:.1f} KiB)" for k, v in per.items())

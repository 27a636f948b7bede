"""Precompute's work on one shard: decode and prepare the images (worker threads), VAE-encode them, encode the
shard's captions once, and write the latent, caption and row files (:func:`process_shard`)."""
from __future__ import annotations

import math
import time
from concurrent.futures import Executor
from pathlib import Path

from pipeline.data.atomic import write_json_atomic
from pipeline.data.image_prep import prepare_images
from pipeline.data.images import ImageDecodeError, decode_image, image_bytes
from pipeline.data.latent_shards import (
    FORMAT,
    FORMAT_VERSION,
    describe_models,
    finite_in_storage,
    save_array_atomic,
    sidecar,
    to_storage,
)
from pipeline.data.prompts import text_id
from pipeline.data.shards import ShardedOutput
from pipeline.runtime.seeds import derive_seed
from pipeline.runtime.stage_runner import reason_kind

from .config import PrecomputeConfig
from .inputs import PAIRS, UNPAIRED, InputShape, classify_row, read_shard, row_id

MAX_ASPECT = 8  # long side / short side above which an image is rejected, not prepared


def _image_blobs(row: dict, base_dir: Path | None, keys=PAIRS.images) -> tuple[dict, dict]:
    """Each image cell's encoded bytes (structs resolved, relative paths from ``base_dir``), and why not."""
    blobs, problems = {}, {}
    for key in keys:
        try:
            blobs[key] = image_bytes(row[key], base_dir)
        except ImageDecodeError as exc:
            blobs[key], problems[key] = None, f"{key}: {exc}"
    return blobs, problems


def _prepare_rows(rows: list[dict], start: int, cfg: PrecomputeConfig, base_dir: Path | None = None,
                  shape: InputShape = PAIRS):
    """Classify, decode and prepare a batch of input rows (runs in a worker thread).

    ``base_dir``: the folder of the input file, where image structs' relative paths are read."""
    pairs, rejects, ties = [], [], 0
    for offset, row in enumerate(rows):
        source_row = start + offset
        kind, value = classify_row(shape, row["caption"], *(row[c] for c in shape.labels))
        if kind == "tie":
            ties += 1
            continue
        blobs, problems = _image_blobs(row, base_dir, shape.images)
        pid = row_id(row, blobs, shape)
        if kind == "pair" and blobs["jpg_0"] and blobs["jpg_0"] == blobs["jpg_1"]:
            kind = "reject:identical images"  # no preference to learn from (e.g. a duplicated path)
        if kind not in ("pair", "example"):
            rejects.append({"source_row": source_row, "pair_id": pid, "caption": row["caption"], "reason": kind[7:]})
            continue
        # Stored order: chosen first for a pair; the one image of an example.
        keys = (f"jpg_{value}", f"jpg_{1 - value}") if kind == "pair" else shape.images
        try:
            images = []
            for key in keys:
                if key in problems:
                    raise ImageDecodeError(problems[key])
                try:
                    image = decode_image(blobs[key])
                except ImageDecodeError as exc:
                    raise ImageDecodeError(f"{key}: {exc}") from None
                w, h = image.size
                if max(w, h) > MAX_ASPECT * min(w, h):
                    # Resizing the short side to --resolution would make a huge strip (8x65536 -> 1024x8M).
                    raise ImageDecodeError(f"{key}: extreme aspect ratio ({w}x{h})")
                images.append(image)
        except ImageDecodeError as exc:
            rejects.append({"source_row": source_row, "pair_id": pid, "caption": row["caption"], "reason": str(exc)})
            continue
        seed = derive_seed(cfg.seed, pid, 0) if cfg.crop == "random" else None
        prepared = prepare_images(images, cfg.resolution, cfg.crop, seed, flips=cfg.flip == "both")
        if kind == "pair":
            fields = {"chosen": value, "label_0": float(row["label_0"]), "label_1": float(row["label_1"])}
        else:
            fields = {"label": value}
        pairs.append({"source_row": source_row, "pair_id": pid, "caption": row["caption"], **fields,
                      "prepared": prepared})
    return pairs, rejects, ties


def _encode_latents(vae, pairs: list[dict], views: int):
    """VAE-encode all images of a batch: -> (mean, logvar), each [B, V, K, C, h, w], scaled (K = 2 for
    pairs, 1 for unpaired examples)."""
    import torch

    pixels = torch.stack([torch.stack(p["prepared"].pixels) for p in pairs])  # [B, V, K, 3, R, R]
    b, k = pixels.shape[0], pixels.shape[2]
    flat = pixels.flatten(0, 2).to(vae.device, vae.dtype)
    with torch.inference_mode():
        dist = vae.encode(flat).latent_dist
    scale = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    mean = ((dist.mean.float() - shift) * scale).unflatten(0, (b, views, k))
    # Var(scale * z) = scale^2 Var(z): the log-variance of the scaled latent.
    logvar = (dist.logvar.float() + 2.0 * math.log(scale)).unflatten(0, (b, views, k))
    return mean, logvar


def _pair_schema():
    import pyarrow as pa

    ids = pa.list_(pa.int32(), 6)
    return pa.schema([("pair_id", pa.string()), ("caption_id", pa.string()), ("caption", pa.string()),
                      ("source_row", pa.int64()), ("chosen", pa.int64()), ("label_0", pa.float64()),
                      ("label_1", pa.float64()), ("time_ids", ids), ("time_ids_flipped", ids)])


def _example_schema():
    import pyarrow as pa

    ids = pa.list_(pa.int32(), 6)
    return pa.schema([("example_id", pa.string()), ("caption_id", pa.string()), ("caption", pa.string()),
                      ("source_row", pa.int64()), ("label", pa.int64()), ("time_ids", ids), ("time_ids_flipped", ids)])


def _reject_schema():
    import pyarrow as pa

    return pa.schema(
        [("source_row", pa.int64()), ("pair_id", pa.string()), ("caption", pa.string()), ("reason", pa.string())]
    )


def _encode_captions(pipe, captions: list[str], batch_size: int, storage_dtype: str,
                     max_sequence_length: int | None = None):
    import numpy as np

    from pipeline.models.conditioning import encode_text

    embeds, pooled = [], []
    for b in range(0, len(captions), batch_size):
        emb = encode_text(pipe, captions[b : b + batch_size], max_sequence_length=max_sequence_length)
        embeds.append(to_storage(emb.prompt_embeds, storage_dtype))
        if emb.pooled is not None:
            pooled.append(to_storage(emb.pooled, storage_dtype))
    return (np.concatenate(embeds) if embeds else None), (np.concatenate(pooled) if pooled else None)


def _text_shapes(pipe, max_sequence_length: int | None = None) -> tuple[list[int], int | None]:
    from pipeline.families import family_of_pipe

    extra = {"max_sequence_length": max_sequence_length} if max_sequence_length else {}
    return family_of_pipe(pipe).text_shapes(pipe, **extra)


def process_shard(pipe, out: ShardedOutput, k: int, path: Path, owners: tuple[list[str], set[str]],
                   cfg: PrecomputeConfig, pool: Executor, bar, shape: InputShape = PAIRS) -> dict:
    """Write shard k: latent/caption side files first, then rejects + stats, the pair (example) table last.

    ``owners``: this shard's part of :func:`caption_owners`."""
    import numpy as np
    import pyarrow as pa

    t0 = time.perf_counter()
    views = 2 if cfg.flip == "both" else 1
    path = read_shard(path)
    names = path.schema_arrow.names
    columns = list(shape.columns) + ([shape.id_column] if shape.id_column in names else [])
    batches = path.iter_batches(batch_size=cfg.batch_size, columns=columns)
    rows, rejects, means, logvars = [], [], [], []
    ties = start = 0
    # Decoding and resizing the next batch (threads: PIL releases the GIL) overlaps the VAE.
    nxt = None
    for batch in batches:
        fut = pool.submit(_prepare_rows, batch.to_pylist(), start, cfg, path.parent, shape)
        start += batch.num_rows
        if nxt is not None:
            ties += _consume(nxt, pipe, views, rows, rejects, means, logvars, cfg, bar)
        nxt = fut
    if nxt is not None:
        ties += _consume(nxt, pipe, views, rows, rejects, means, logvars, cfg, bar)
    n = len(rows)
    latent_shape = [
        pipe.vae.config.latent_channels,
        cfg.resolution // pipe.vae_scale_factor,
        cfg.resolution // pipe.vae_scale_factor,
    ]
    empty = np.zeros((0, views, len(shape.images), *latent_shape),
                     dtype="<u2" if cfg.storage_dtype == "bf16" else np.float16)
    latents = np.concatenate(means) if means else empty
    save_array_atomic(sidecar(out.root, k, out.num_shards, "latents"), latents)
    if cfg.latent_stats:
        save_array_atomic(sidecar(out.root, k, out.num_shards, "logvar"), np.concatenate(logvars) if logvars else empty)
    owned, local = owners
    kept_captions = {r["caption_id"] for r in rows}
    owned = [c for c in owned if c not in local or text_id(c) in kept_captions]  # none that no kept pair uses
    embeds, pooled = _encode_captions(pipe, owned, cfg.batch_size, cfg.storage_dtype, cfg.max_sequence_length)
    text_shape, pooled_dim = _text_shapes(pipe, cfg.max_sequence_length)
    if embeds is None:
        embeds = np.zeros((0, *text_shape), dtype=empty.dtype)
        pooled = np.zeros((0, pooled_dim), dtype=empty.dtype) if pooled_dim else None
    save_array_atomic(sidecar(out.root, k, out.num_shards, "prompt_embeds"), embeds)
    if pooled is not None:
        save_array_atomic(sidecar(out.root, k, out.num_shards, "pooled"), pooled)
    write_json_atomic(sidecar(out.root, k, out.num_shards, "captions"),
                      {"caption_ids": [text_id(c) for c in owned], "captions": owned})
    table = pa.Table.from_pylist(rows, schema=_pair_schema() if shape is PAIRS else _example_schema())
    reject_table = pa.Table.from_pylist(rejects, schema=_reject_schema())
    stats = {"rows": start, "pairs": n, "ties": ties, "rejects": len(rejects), "captions_encoded": len(owned),
             "images_encoded": len(shape.images) * views * n,
             "latent_bytes": int(latents.nbytes) * (2 if cfg.latent_stats else 1),
             "text_bytes": int(embeds.nbytes + (pooled.nbytes if pooled is not None else 0)),
             "reject_reasons": _count(reason_kind(r["reason"]) for r in rejects), "seconds": time.perf_counter() - t0}
    if shape is UNPAIRED:  # "pairs" counts the examples; how many are desirable, for the balance
        stats["desirable"] = sum(r["label"] for r in rows)
    out.write_shard(k, {"data": table, "rejects": reject_table}, stats)
    return stats


def cast_quietly(module, dtype) -> None:
    """Cast the VAE alone (diffusers warns about casting after loading; here it is intended)."""
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        module.to(dtype)
    finally:
        dlog.set_verbosity(level)


def _count(values) -> dict:
    counts: dict = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts


def _consume(future, pipe, views, rows, rejects, means, logvars, cfg, bar) -> int:
    """Encode one prepared batch and append its rows; returns the batch's tie count."""
    import torch

    pairs, batch_rejects, ties = future.result()
    rejects.extend(batch_rejects)
    if pairs:
        mean, logvar = _encode_latents(pipe.vae, pairs, views)
        finite = torch.isfinite(mean).flatten(1).all(1) & torch.isfinite(logvar).flatten(1).all(1)
        # Checked after the cast as well: values finite in fp32 can overflow the storage dtype.
        storable = finite_in_storage(mean, cfg.storage_dtype)
        if cfg.latent_stats:
            storable &= finite_in_storage(logvar, cfg.storage_dtype)
        for j, p in enumerate(pairs):
            if not finite[j] or not storable[j]:
                reason = ("non-finite latents (an fp16 VAE overflow? use --vae-dtype fp32 or an fp16-fix --vae)"
                          if not finite[j]
                          else f"latents beyond the {cfg.storage_dtype} storage range (use --storage-dtype bf16)")
                rejects.append({"source_row": p["source_row"], "pair_id": p["pair_id"], "caption": p["caption"],
                                "reason": reason})
                continue
            box = p["prepared"]
            labels = ({"label": p["label"]} if "label" in p else
                      {"chosen": p["chosen"], "label_0": p["label_0"], "label_1": p["label_1"]})
            rows.append({("example_id" if "label" in p else "pair_id"): p["pair_id"],
                         "caption_id": text_id(p["caption"]),
                         "caption": p["caption"], "source_row": p["source_row"], **labels,
                         "time_ids": list(box.time_ids()),
                         "time_ids_flipped": list(box.time_ids(True)) if views == 2 else None})
            means.append(to_storage(mean[j : j + 1], cfg.storage_dtype))
            if cfg.latent_stats:
                logvars.append(to_storage(logvar[j : j + 1], cfg.storage_dtype))
    bar.update(len(pairs) + len(batch_rejects) + ties)
    return ties


def describe_encoders(pipe, cfg: PrecomputeConfig, dtype, vae_dtype, shape: InputShape = PAIRS) -> dict:
    """The output's ``latents`` description (manifest): format, family, encoders and their fingerprints
    (:func:`pipeline.data.latent_shards.describe_models`), latent and text-embedding shapes, dtypes, scaling."""
    from pipeline.families import family_of_pipe

    family = family_of_pipe(pipe)
    encoders = family.encoder_modules(pipe)
    text_shape, pooled_dim = _text_shapes(pipe, cfg.max_sequence_length)
    side = cfg.resolution // pipe.vae_scale_factor
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "family": family.name,
        "shape": shape.name,
        "model": cfg.model, "vae": cfg.vae, "text_encoders": [te.config._name_or_path for te in encoders],
        "resolution": cfg.resolution, "storage_dtype": cfg.storage_dtype, "compute_dtype": dtype,
        "vae_dtype": vae_dtype,
        "latent_shape": [pipe.vae.config.latent_channels, side, side], "views": 2 if cfg.flip == "both" else 1,
        "latent_stats": cfg.latent_stats, "crop": cfg.crop, "prompt_embeds_shape": text_shape, "pooled_dim": pooled_dim,
        "scaling_factor": pipe.vae.config.scaling_factor,
        "shift_factor": getattr(pipe.vae.config, "shift_factor", None),
        "components": describe_models(pipe.vae, encoders),
        **({"max_sequence_length": cfg.max_sequence_length or family.max_sequence_length, "t5": cfg.t5}
           if family.max_sequence_length is not None else {}),
    }


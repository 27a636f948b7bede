"""``mapo-data precompute``: preference shards -> VAE latents + text embeddings as training shards.

Input shard k (a Parquet file with the Pick-a-Pic columns caption, jpg_0, jpg_1, label_0,
label_1; or, for Diffusion-KTO, unpaired examples: caption, jpg, label in {0, 1}) becomes output
shard k, so any process count and any resume give the same shards.
Ties are dropped and counted; pairs are stored chosen first; rows whose images do not decode
(or are absurdly large) or whose labels are missing go to ``rejects/`` with a reason. Images
are prepared as the trainers prepare them (``pipeline.data.image_prep``), text is encoded with
``pipeline.models.conditioning.encode_text``; each distinct caption is encoded once for the whole
input: a cheap first pass over the caption/label columns gives every caption to the first
shard that uses it. The storage format and its reader live in ``pipeline.data.latent_shards``.

The two input shapes (:class:`InputShape`) run through the same code: a pair is two images that
share one crop, an unpaired example is one image; the shape is read from the input's columns.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.cli.options import (
    DTYPES,
    PANEL_IO,
    PANEL_MODEL,
    PANEL_RUN,
    at_least,
    check_options,
    device_option,
    dtype_option,
    model_option,
    multiple_of_8,
    option,
    options_record,
    overwrite_option,
    split_option,
    vae_option,
)
from pipeline.data.image_prep import CROPS, prepare_images
from pipeline.data.images import ImageDecodeError, decode_image, image_bytes, is_image_column
from pipeline.data.latent_shards import (
    FORMAT,
    FORMAT_VERSION,
    STAGE,
    STORAGE_DTYPES,
    check_model,
    describe_models,
    finite_in_storage,
    save_array_atomic,
    sidecar,
    to_storage,
)
from pipeline.data.layouts import LayoutOptions, as_shard, open_pairs
from pipeline.data.prompts import text_id
from pipeline.data.shards import SPLIT, ShardedOutput, check_output_apart, read_manifest, write_json_atomic
from pipeline.errors import UserError
from pipeline.judges.scores import is_finite_score
from pipeline.models.loading import (
    DEFAULT_MODEL,
    check_model_available,
    check_resolution,
    default_resolution,
    dtype_name,
    load_pipeline,
    model_family_of,
    resolve_device,
    resolve_dtype,
)
from pipeline.runtime.distributed import accelerator_device, current_process
from pipeline.runtime.seeds import derive_seed
from pipeline.runtime.stage_runner import ShardedStage, reason_kind, run_sharded

REQUIRED_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")
UNPAIRED_COLUMNS = ("caption", "jpg", "label")
FLIPS = ("none", "both")


@dataclass(frozen=True)
class InputShape:
    """What one input row is: a preference pair, or one labelled image (Diffusion-KTO's unpaired data)."""

    name: str  # "pairs" | "unpaired": the latents' ``shape`` (pipeline.data.latent_shards)
    columns: tuple[str, ...]  # required input columns
    images: tuple[str, ...]  # image columns, in stored order for a pair after the chosen-first swap
    labels: tuple[str, ...]
    id_column: str  # the input's optional id column, and the output's id column
    description: str  # what such rows are, for messages: "<description> need <columns>"


PAIRS = InputShape("pairs", REQUIRED_COLUMNS, ("jpg_0", "jpg_1"), ("label_0", "label_1"), "pair_id",
                   "Pick-a-Pic-format preference pairs (e.g. the output of `mapo-data label`)")
UNPAIRED = InputShape("unpaired", UNPAIRED_COLUMNS, ("jpg",), ("label",), "example_id",
                      "unpaired examples (for --objective kto)")


PANEL_PREP = "Image preparation and storage"


@dataclass
class PrecomputeConfig:
    """``mapo-data precompute``: every option, declared once (:mod:`pipeline.cli.options`)."""

    input: str = option(flags=("--input",), panel=PANEL_IO, help=(
        "Preference shards: a folder (data/*.parquet), a Parquet file or a glob, with caption, jpg_0, jpg_1, "
        "label_0, label_1; or unpaired examples (for --objective kto) with caption, jpg, label (1 desirable, "
        "0 undesirable)."))
    output: str = option(panel=PANEL_IO, help="Output folder for the latent shards (resumable).")
    model: str = model_option(DEFAULT_MODEL)
    vae: str | None = vae_option()
    dtype: str = dtype_option("Text encoders: auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16.")
    # SDXL's own VAE overflows in fp16; pass fp16 with an fp16-fix --vae.
    vae_dtype: str = option("fp32", choices=DTYPES, panel=PANEL_MODEL, help=(
        "VAE precision (SDXL's own VAE overflows in fp16; fp16 is fine with an fp16-fix --vae)."))
    device: str = device_option()
    resolution: int | None = option(None, check=multiple_of_8, panel=PANEL_PREP, help=(
        "Training resolution: short side resized to it, then a square crop; default: the model's own "
        "(1024 for SDXL, 512 for SD1.5, 64 for the built-in models)."))
    crop: str = option(
        "center", choices=CROPS, panel=PANEL_PREP, help="center, or random (seeded per pair from --seed)."
    )
    seed: int = option(0, panel=PANEL_PREP, help="Seed for --crop random.")
    flip: str = option("none", choices=FLIPS, panel=PANEL_PREP,
                       help="none, or both: also cache the mirrored latents so training can flip.")
    latent_stats: bool = option(False, flags=("--latent-stats",), panel=PANEL_PREP,
                                help="Also keep the latent log-variance (training can sample).")
    storage_dtype: str = option("fp16", choices=STORAGE_DTYPES, panel=PANEL_PREP,
                                help="fp16 or bf16 for stored latents and embeddings.")
    max_sequence_length: int | None = option(None, check=at_least(1), panel=PANEL_MODEL, help=(
        "SD3: T5 tokens stored per caption; default: the pipeline's own (256). Each token costs "
        "joint_attention_dim x 2 bytes (8 KiB for SD3.5)."))
    t5: bool = option(True, flags=("--t5/--no-t5",), panel=PANEL_MODEL, help=(
        "SD3: run the T5 text encoder (default), or store zeros in its place as StableDiffusion3Pipeline "
        "does with text_encoder_3=None (saves T5's ~9 GB of memory; train and sample the same way)."))
    # 1024 px images are memory-hungry: 2 (x2 with flips) images per pair.
    batch_size: int = option(4, check=at_least(1), panel=PANEL_RUN,
                             help="Pairs per VAE call (and captions per text-encoder call).")
    overwrite: bool = overwrite_option()
    split: str = split_option()
    layout: LayoutOptions = field(default_factory=LayoutOptions)

    def validate(self) -> "PrecomputeConfig":
        """The declared checks.

        Raises:
            UserError: a value outside its choices or range.
        """
        check_options(self)
        return self


@dataclass
class PrecomputeResult:
    output: str
    pairs_written: int
    shards_written: int
    shards_skipped: int
    ties: int
    rejects: int
    captions_encoded: int
    latent_bytes: int  # bytes of latent arrays written by this process
    seconds: float
    loop_seconds: float
    shape: str = "pairs"  # or "unpaired": then pairs_written counts examples
    desirable: int = 0  # unpaired examples labelled 1

    @property
    def pairs_per_second(self) -> float:
        return self.pairs_written / self.loop_seconds if self.loop_seconds else 0.0

    @property
    def bytes_per_pair(self) -> float:
        return self.latent_bytes / self.pairs_written if self.pairs_written else 0.0


# -- input -----------------------------------------------------------------------------------
def _parquet(f: Path):
    """An input shard (``pipeline.data.layouts``: any layout, read like a ParquetFile); a path is read as Parquet."""
    return as_shard(f)


def input_shape(files: list[Path]) -> InputShape:
    """Unpaired examples when the first file has a ``jpg`` column and no ``jpg_0``; pairs otherwise."""
    names = _parquet(files[0]).schema_arrow.names if files else []
    return UNPAIRED if "jpg" in names and "jpg_0" not in names else PAIRS


def _check_columns(files: list[Path], shape: InputShape = PAIRS) -> dict:
    """Column check up front (one clear line) and a fingerprint of the input's Parquet footers.

    Unpaired labels are read whole here (one small column): a label other than 0/1 stops the run
    before anything is written."""
    h = hashlib.sha256()
    for f in files:
        meta = _parquet(f)
        names = meta.schema_arrow.names
        missing = [c for c in shape.columns if c not in names]
        if missing:
            raise UserError(_missing_columns_message(f, missing, shape))
        wrong = [f"{c} ({meta.schema_arrow.field(c).type})" for c in shape.images
                 if not is_image_column(meta.schema_arrow.field(c).type)]
        if wrong:
            raise UserError(f"{f} has image column(s) {', '.join(wrong)} of another type: precompute reads encoded "
                            "image bytes or datasets Image structs ({bytes, path}).")
        if shape is UNPAIRED:
            _check_unpaired_labels(f, meta)
        h.update(f.name.encode())
        h.update(json.dumps(meta.metadata.to_dict(), sort_keys=True, default=str).encode())
    return {"files": [str(f) for f in files], "fingerprint": h.hexdigest()[:16]}


def _missing_columns_message(f: Path, missing: list[str], shape: InputShape) -> str:
    """One line for either shape: what ``f`` was read as (:func:`input_shape`), what it needs, and what the
    other shape needs instead."""
    other = UNPAIRED if shape is PAIRS else PAIRS
    return (f"{f} lacks column(s) {', '.join(missing)}: {shape.description} need {', '.join(shape.columns)}; "
            f"{other.description} need {', '.join(other.columns)} instead.")


def _check_unpaired_labels(f: Path, meta) -> None:
    import pyarrow.types as pat

    kind = meta.schema_arrow.field("label").type
    if not (pat.is_integer(kind) or pat.is_floating(kind) or pat.is_boolean(kind)):
        raise UserError(f"{f}: column label is {kind}; unpaired examples need label 1 (desirable) or 0 (undesirable).")
    values = meta.read(columns=["label"]).column("label").to_pylist()
    for row, value in enumerate(values):
        if value is None or value not in (0, 1):
            raise UserError(f"{f}: column label holds {value!r} (row {row}); unpaired examples need label 1 "
                            "(desirable) or 0 (undesirable).")


def _classify(caption, label_0, label_1) -> tuple[str, int | None]:
    """('pair', chosen column) | ('tie', None) | ('reject', None) from a row's text and labels."""
    if caption is None or not str(caption).strip():
        return "reject:empty caption", None
    if not (is_finite_score(label_0) and is_finite_score(label_1)):  # None, NaN or +-inf never decides
        return "reject:missing label", None
    if label_0 == label_1:
        return "tie", None
    return "pair", 0 if label_0 > label_1 else 1


def _classify_row(shape: InputShape, caption, *labels) -> tuple[str, int | None]:
    """:func:`_classify` for a pair; ('example', label) | ('reject:...', None) for an unpaired example
    (its label was checked up front)."""
    if shape is PAIRS:
        return _classify(caption, *labels)
    if caption is None or not str(caption).strip():
        return "reject:empty caption", None
    return "example", int(labels[0])


def caption_owners(files: list[Path], shape: InputShape = PAIRS) -> list[tuple[list[str], set[str]]]:
    """For each shard, ``(the captions it encodes, those of them used by no later shard)``: a shard owns the
    captions whose first pair (or example) in the input is in it; a caption of the second set whose pairs the
    shard rejects all (images missing or corrupt) is left out, as no kept pair anywhere needs it."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    owned: list[list[str]] = []
    for k, f in enumerate(files):
        columns = ["caption", *shape.labels]
        table = _parquet(f).read(columns=columns)
        mine = []
        for cap, *labels in zip(*(table.column(c).to_pylist() for c in columns)):
            if _classify_row(shape, cap, *labels)[0] not in ("pair", "example"):
                continue
            last[cid := text_id(cap)] = k
            if cid not in first:
                first[cid] = k
                mine.append(cap)
        owned.append(mine)
    return [(mine, {c for c in mine if last[text_id(c)] == k}) for k, mine in enumerate(owned)]


def _pair_id(row: dict, blobs: dict, shape: InputShape = PAIRS) -> str:
    """The input's pair_id (example_id), else a content id from the caption and the images' encoded bytes
    (so a pair gets the same id whether its images are stored as bytes or as datasets Image structs)."""
    given = row.get(shape.id_column)
    if given:
        return str(given)
    digest = hashlib.sha256()
    for key in shape.images:
        digest.update(hashlib.sha256(blobs[key] or b"").digest())
    return text_id(f"{row['caption']}\x00{digest.hexdigest()}")


# -- the work ----------------------------------------------------------------------------------
def _identity(cfg: PrecomputeConfig, input_fp: str, dtype: str, vae_dtype: str, split: str = SPLIT,
              shape: InputShape = PAIRS) -> dict:
    ident = {"input_fingerprint": input_fp, "model": cfg.model, "vae": cfg.vae, "dtype": dtype, "vae_dtype": vae_dtype,
             "resolution": cfg.resolution, "crop": cfg.crop, "flip": cfg.flip, "latent_stats": cfg.latent_stats,
             "storage_dtype": cfg.storage_dtype}
    if cfg.max_sequence_length is not None or not cfg.t5:  # only then: older outputs keep their fingerprint
        ident.update(max_sequence_length=cfg.max_sequence_length, t5=cfg.t5)
    if cfg.crop == "random":
        ident["seed"] = cfg.seed
    if split != SPLIT:  # only then: outputs made before splits were chosen keep their fingerprint
        ident["split"] = split
    if shape is not PAIRS:  # likewise: pair outputs keep their fingerprint
        ident["shape"] = shape.name
    return ident


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
        kind, value = _classify_row(shape, row["caption"], *(row[c] for c in shape.labels))
        if kind == "tie":
            ties += 1
            continue
        blobs, problems = _image_blobs(row, base_dir, shape.images)
        pid = _pair_id(row, blobs, shape)
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


def _process_shard(pipe, out: ShardedOutput, k: int, path: Path, owners: tuple[list[str], set[str]],
                   cfg: PrecomputeConfig, pool: Executor, bar, shape: InputShape = PAIRS) -> dict:
    """Write shard k: latent/caption side files first, then rejects + stats, the pair (example) table last.

    ``owners``: this shard's part of :func:`caption_owners`."""
    import numpy as np
    import pyarrow as pa

    t0 = time.perf_counter()
    views = 2 if cfg.flip == "both" else 1
    path = _parquet(path)
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


def _cast_quietly(module, dtype) -> None:
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


def _describe(pipe, cfg: PrecomputeConfig, dtype, vae_dtype, shape: InputShape = PAIRS) -> dict:
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
        **({"max_sequence_length": text_shape[0] - pipe.tokenizer.model_max_length, "t5": cfg.t5}
           if family.name == "sd3" else {}),
    }


def run_precompute(cfg: PrecomputeConfig) -> PrecomputeResult:
    """Precompute all pending shards of ``cfg.output`` that belong to this process."""
    record = options_record(cfg)
    cfg.validate()
    t_start = time.perf_counter()
    proc = current_process()
    pairs = open_pairs(cfg.input, cfg.split, cfg.layout)
    split, files = pairs.split, pairs.shards
    check_output_apart(cfg.output, pairs.files)
    shape = input_shape(files)
    source = _check_columns(files, shape)
    if pairs.layout != "pickapic":  # the layout and its label rule, in the manifest's "input"
        source.update(pairs.describe())
    if cfg.resolution is None:
        cfg.resolution = default_resolution(cfg.model)
    device = resolve_device(accelerator_device(cfg.device))
    dtype = resolve_dtype(cfg.dtype, device)
    vae_dtype = resolve_dtype(cfg.vae_dtype, device)
    identity = _identity(cfg, source["fingerprint"], dtype_name(dtype), dtype_name(vae_dtype), split, shape)
    out = ShardedOutput(cfg.output, STAGE, identity, len(files), {**asdict(cfg), **record,
                                                                          "input_files": source["files"]})
    out.check(cfg.overwrite)  # a mismatched folder is refused before any model import
    if not out.finished(cfg.overwrite):  # a finished rerun: nothing to do, no model looked up or loaded
        check_model_available(cfg.model, cfg.vae)  # before the output folder exists: a typo leaves nothing
        check_resolution(cfg.model, cfg.resolution)
        _check_t5_options(cfg)
    work = _PrecomputeShards(cfg, out, files, proc, device, dtype, vae_dtype, shape)
    run = run_sharded(ShardedStage(STAGE, out, work.process_shard, lambda todo: sum(_num_rows(files[k]) for k in todo),
                                   setup=work.setup, overwrite=cfg.overwrite,
                                   manifest_extra=lambda: {
                                       "latents": work.description or work.previous, "input": source
                                   }),
                      proc)
    _warn_if_nothing_kept(run.summed, out.root, shape)
    t = run.totals
    return PrecomputeResult(cfg.output, t.get("pairs", 0), len(run.todo), run.skipped, t.get("ties", 0),
                            t.get("rejects", 0),
                            t.get("captions_encoded", 0), t.get("latent_bytes", 0), time.perf_counter() - t_start,
                            run.loop_seconds, shape.name, t.get("desirable", 0))


def _check_t5_options(cfg: PrecomputeConfig) -> None:
    """Refuse ``--no-t5`` / ``--max-sequence-length`` for a model whose family has no T5 encoder (SD1.5,
    SDXL): they would be recorded in the output's identity while changing nothing in its latents.

    Raises:
        UserError: either option given for a model that is not SD3.
    """
    given = [flag for flag, on in (("--no-t5", not cfg.t5),
                                   ("--max-sequence-length", cfg.max_sequence_length is not None)) if on]
    fam = model_family_of(cfg.model) if given else None
    if fam is not None and fam.name != "sd3":
        raise UserError(f"{' and '.join(given)} only apply to SD3 models (their T5 text encoder); "
                        f"'{cfg.model}' is {fam.name}, which has no T5: leave {' and '.join(given)} out.")


def _warn_if_nothing_kept(summed: dict | None, root: Path, shape: InputShape) -> None:
    """Main process: an output of no pair (example) says so with its top reasons (ties included)."""
    import sys

    from pipeline.runtime.stage_runner import nothing_kept_warning

    if summed is None:
        return
    reasons = {**summed.get("reject_reasons", {}), "tie": summed.get("ties", 0)}
    line = nothing_kept_warning(STAGE, summed.get("rows", 0), summed.get("pairs", 0), reasons, root)
    if line:
        print(line, file=sys.stderr)


class _PrecomputeShards:
    """Precompute's part of the sharded run: load the VAE and text encoders, then one shard at a time."""

    def __init__(self, cfg: PrecomputeConfig, out: ShardedOutput, files: list[Path], proc, device, dtype, vae_dtype,
                 shape: InputShape = PAIRS):
        self.cfg, self.out, self.files, self.proc, self.shape = cfg, out, files, proc, shape
        self.device, self.dtype, self.vae_dtype = device, dtype, vae_dtype
        self.pipe = self.description = self.previous = None
        self.owners: list = []

    def setup(self, todo: list[int]) -> None:
        """Load the encoders when there is work, or on the main process of a folder with no model description yet."""
        cfg, proc = self.cfg, self.proc
        self.previous = (read_manifest(self.out.root) or {}).get("latents")
        if not (todo or (proc.is_main and self.previous is None)):
            return
        fam = model_family_of(cfg.model)
        skip = (fam.denoiser_dir,) + (() if cfg.t5 or fam.name != "sd3" else ("text_encoder_3", "tokenizer_3"))
        self.pipe = pipe = load_pipeline(cfg.model, vae=cfg.vae, dtype=self.dtype, device=self.device, skip=skip)
        if pipe.vae.dtype != self.vae_dtype:
            _cast_quietly(pipe.vae, self.vae_dtype)
        if proc.is_main:
            self.description = _describe(pipe, cfg, dtype_name(self.dtype), dtype_name(self.vae_dtype), self.shape)
        if self.previous is not None:  # same model id, but are they the same weights as the finished shards'?
            from pipeline.families import family_of_pipe

            encoders = family_of_pipe(pipe).encoder_modules(pipe)
            check_model({"latents": self.previous}, vae=pipe.vae, text_encoders=encoders)
        if todo:
            self.owners = caption_owners(self.files, self.shape)

    def process_shard(self, k: int, pool, bar) -> dict:
        return _process_shard(self.pipe, self.out, k, self.files[k], self.owners[k], self.cfg, pool, bar, self.shape)


def _num_rows(path: Path) -> int:
    return _parquet(path).metadata.num_rows

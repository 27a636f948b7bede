"""``mapo-data generate``: prompts -> self-generated image pairs as Parquet shards.

Shard k holds pairs for prompts [k*shard_size, (k+1)*shard_size); each image's seed is derived
from (seed, prompt id, image index), so the bytes of shard k do not depend on which process
makes it, on the batch size (in batch-invariant mode) or on whether the run was resumed.

One row per prompt: ``jpg_0``, ``jpg_1`` (a pair), or ``jpg_0`` ... ``jpg_{K-1}`` with
``--recipe seeds --images-per-prompt K`` (best-of-N candidates; ``prompt_i``, ``negative_prompt_i``,
``seed_i`` likewise). A prompt's candidates stay in one row and rows are written in row groups of
:data:`ROW_GROUP_ROWS`, so ``label`` reads a few prompts' candidates at a time, never a whole shard.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from pipeline.cli.options import (
    PANEL_IO,
    PANEL_RUN,
    PANEL_SAMPLING,
    at_least,
    batch_invariant_option,
    between,
    check_options,
    device_option,
    dtype_option,
    guidance_scale_option,
    model_option,
    num_inference_steps_option,
    option,
    options_record,
    overwrite_option,
    prompt_column_option,
    prompt_split_option,
    resolution_option,
    seed_option,
    vae_option,
)
from pipeline.data.images import IMAGE_FORMATS, encode_image
from pipeline.data.prompts import load_prompts
from pipeline.data.shards import ShardedOutput, shard_ranges
from pipeline.models.loading import (
    DEFAULT_MODEL,
    check_model_available,
    check_negative_prompt,
    check_resolution,
    check_t5_options,
    compile_unet,
    default_resolution,
    dtype_name,
    load_pipeline,
    resolve_device,
    resolve_dtype,
    t5_length_to_record,
)
from pipeline.models.option_checks import check_compile, check_t5_length
from pipeline.runtime.distributed import accelerator_device, current_process
from pipeline.runtime.seeds import derive_seed, initial_noise
from pipeline.runtime.stage_runner import ShardedStage, run_sharded

from .recipes import RecipeConfig, image_requests, pair_caption

STAGE = "generate"
# Rows (prompts) per Parquet row group: readers hold one row group's images at a time (1024 px PNGs
# are ~1.5 MB each; 16 rows of 8 candidates ~ 200 MB).
ROW_GROUP_ROWS = 16


@dataclass
class GenerateConfig:
    """``mapo-data generate``: every option, declared once (:mod:`pipeline.cli.options`)."""

    prompts: str = option(help="Prompt source: .txt (one per line), .jsonl/.csv/.parquet, or a datasets name.",
                          panel=PANEL_IO)
    output: str = option(help="Output folder for the pair shards (resumable).", panel=PANEL_IO)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    model: str = model_option(DEFAULT_MODEL)
    vae: str | None = vae_option()
    dtype: str = dtype_option()
    device: str = device_option()
    num_inference_steps: int = num_inference_steps_option(30)
    guidance_scale: float = guidance_scale_option(5.0)
    resolution: int | None = resolution_option()  # None: pipeline.models.loading.default_resolution(model)
    max_sequence_length: int | None = option(None, check=at_least(1), panel=PANEL_SAMPLING, help=(
        "SD3, Flux: T5 tokens per prompt, as the pipeline's max_sequence_length (at most 512); default: the "
        "pipeline's own (SD3 256, Flux 512). Fewer tokens sample faster."))
    seed: int = seed_option("Global seed; each image's seed derives from (seed, prompt id, image index).")
    shard_size: int = option(100, help="Pairs per Parquet shard.", check=at_least(1), panel=PANEL_IO)
    batch_size: int = option(4, help="Prompts per pipeline call (each gives its pair or --images-per-prompt images).",
                             check=at_least(1), panel=PANEL_RUN)
    image_format: str = option("png", help="png (lossless), jpeg or webp.", choices=IMAGE_FORMATS, panel=PANEL_IO)
    quality: int = option(95, help="JPEG/WebP quality.", check=between(1, 100), panel=PANEL_IO)
    prompt_column: str | None = prompt_column_option()
    prompt_split: str = prompt_split_option()
    keep_duplicates: bool = option(False, help="Keep duplicate prompts (dropped by default).", panel=PANEL_IO)
    limit: int | None = option(None, help="Use only the first N usable prompts.", check=at_least(1), panel=PANEL_IO)
    batch_invariant: bool = batch_invariant_option()
    compile: bool = option(False, flags=("--compile",), help=(
        "Regional torch.compile of the UNet's transformer blocks (as mapo-train --compile; not SD3, whose "
        "transformer declares no repeated blocks in diffusers); the first batch compiles."),
        panel=PANEL_RUN)
    overwrite: bool = overwrite_option()

    def validate(self) -> "GenerateConfig":
        """The declared checks, the recipe's included.

        Raises:
            UserError: a value outside its choices or range.
        """
        check_options(self)
        self.recipe.validate()
        return self


@dataclass
class GenerateResult:
    output: str
    pairs_written: int
    shards_written: int
    shards_skipped: int
    process: tuple[int, int]  # (index, count) of the process that made this result
    seconds: float  # the whole call, model loading included
    loop_seconds: float  # generating, encoding and writing the shards
    pipeline_seconds: float  # inside the diffusion pipeline call
    dropped_empty: int = 0  # blank prompts skipped
    dropped_duplicates: int = 0  # repeated prompts skipped (unless --keep-duplicates)

    @property
    def pairs_per_second(self) -> float:
        return self.pairs_written / self.loop_seconds if self.loop_seconds else 0.0

    @property
    def outside_pipeline_share(self) -> float:
        """Share of the generation loop spent outside the pipeline call (encoding, writing, waiting)."""
        return 1.0 - self.pipeline_seconds / self.loop_seconds if self.loop_seconds else 0.0


def _identity(cfg: GenerateConfig, prompt_fp: str, dtype: str) -> dict:
    """Everything that decides the bytes written (batch size only when it can change them)."""
    ident = {
        "prompts_fingerprint": prompt_fp,
        **cfg.recipe.describe(),
        "model": cfg.model,
        "vae": cfg.vae,
        "dtype": dtype,
        "num_inference_steps": cfg.num_inference_steps,
        "guidance_scale": cfg.guidance_scale,
        "resolution": cfg.resolution,
        "seed": cfg.seed,
        "shard_size": cfg.shard_size,
        "image_format": cfg.image_format,
        "quality": cfg.quality if cfg.image_format != "png" else None,
        "batch_invariant": cfg.batch_invariant,
    }
    if not cfg.batch_invariant:
        ident["batch_size"] = cfg.batch_size
    t5_tokens = t5_length_to_record(cfg.model, cfg.max_sequence_length)
    if t5_tokens is not None:  # absent at the default, given or not: older outputs resume
        ident["max_sequence_length"] = t5_tokens
    if cfg.compile:  # compiled kernels round differently (a few 8-bit levels); absent when off: older outputs resume
        ident["compile"] = True
    return ident


def _pair_schema(images: int = 2):
    """One row per prompt with ``images`` per-image columns of each kind (2: the Pick-a-Pic pair layout)."""
    import pyarrow as pa

    each = range(images)
    return pa.schema([
        ("pair_id", pa.string()),
        ("prompt_id", pa.string()),
        ("caption", pa.string()),
        *[(f"jpg_{i}", pa.binary()) for i in each],
        *[(f"prompt_{i}", pa.string()) for i in each],
        *[(f"negative_prompt_{i}", pa.string()) for i in each],
        *[(f"seed_{i}", pa.int64()) for i in each],
        ("intended_chosen", pa.int64()),
        ("recipe", pa.string()),
        ("style", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("num_inference_steps", pa.int64()),
        ("guidance_scale", pa.float64()),
        ("scheduler", pa.string()),
        ("model", pa.string()),
        ("image_format", pa.string()),
    ])


def generate_images(pipe, requests, seeds, cfg: GenerateConfig, max_sequence_length: int | None = None):
    """Run the pipeline once over a flat list of image requests; returns PIL images.

    ``max_sequence_length``: T5 tokens per prompt (SD3, Flux; None: the pipeline's 256, Flux's 512), e.g. what a trained
    candidate's latents were encoded with."""
    import torch

    from pipeline.families import family_of_pipe
    from pipeline.models.conditioning import concat_embeddings, encode_text

    family = family_of_pipe(pipe)
    # Classifier-free guidance on negative prompts; a guidance-distilled family takes guidance_scale as an input.
    guidance = cfg.guidance_scale > 1.0 and family.cfg_negative_prompt
    # Each prompt is encoded alone (cheap next to the denoising steps): the embeddings do not
    # depend on batch composition, and "no negative prompt" keeps the pipeline's own meaning.
    emb = concat_embeddings([
        encode_text(pipe, [r.prompt], [r.negative_prompt] if r.negative_prompt else None, guidance=guidance,
                    max_sequence_length=max_sequence_length)
        for r in requests
    ])
    # Initial noise from per-image CPU generators: the same noise on any device and batch size.
    denoiser = family.denoiser(pipe)
    latents = initial_noise(seeds, family.latent_channels(denoiser.config), cfg.resolution // pipe.vae_scale_factor)
    with torch.inference_mode():
        out = pipe(
            **emb.pipeline_kwargs(),
            latents=family.pipeline_latents(pipe, latents).to(pipe.device, denoiser.dtype),
            num_inference_steps=cfg.num_inference_steps,
            guidance_scale=cfg.guidance_scale,
            height=cfg.resolution,
            width=cfg.resolution,
            output_type="pil",
        )
    return out.images


def _write_shard(out: ShardedOutput, k: int, batches, shared: dict, recipe: RecipeConfig, shard_t0: float) -> dict:
    """Assemble shard k's rows (one per prompt) once its images are encoded, and write it atomically; returns its
    counters."""
    import pyarrow as pa

    from pipeline.data.hf_features import with_hf_features

    n = recipe.images_per_prompt
    rows = []
    for batch, requests, seeds, blobs in batches:
        encoded = blobs.result()
        for j, p in enumerate(batch):
            mine = range(n * j, n * (j + 1))  # this prompt's images in the batch, in image order
            row = {"pair_id": f"{p.id}-{shared['recipe']}", "prompt_id": p.id, "caption": pair_caption(recipe, p.text)}
            for i, at in enumerate(mine):
                row.update({f"jpg_{i}": encoded[at], f"prompt_{i}": requests[at].prompt,
                            f"negative_prompt_{i}": requests[at].negative_prompt, f"seed_{i}": seeds[at]})
            rows.append({**row, **shared})
    table = with_hf_features(pa.Table.from_pylist(rows, schema=_pair_schema(n)))
    stats = {"pairs": table.num_rows, "images": n * table.num_rows, "seconds": time.perf_counter() - shard_t0}
    out.write_shard(k, {"data": table}, stats, compression="none", row_group_size=ROW_GROUP_ROWS)
    return stats


def run_generate(cfg: GenerateConfig) -> GenerateResult:
    """Generate all pending shards of ``cfg.output`` that belong to this process.

    Every check (options, prompts, output folder, model) runs before the output folder is written.

    Raises:
        UserError: bad options or prompts, an output folder of another configuration, a missing model.
    """
    record = options_record(cfg)  # as given, before validate() fills anything in
    cfg.validate()
    t_start = time.perf_counter()
    proc = current_process()
    prompt_set = load_prompts(cfg.prompts, column=cfg.prompt_column, split=cfg.prompt_split,
                              keep_duplicates=cfg.keep_duplicates, limit=cfg.limit)
    device = resolve_device(accelerator_device(cfg.device))
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.resolution is None:
        cfg.resolution = default_resolution(cfg.model)
    ranges = shard_ranges(len(prompt_set.prompts), cfg.shard_size)
    identity = _identity(cfg, prompt_set.fingerprint(), dtype_name(dtype))
    config = {**asdict(cfg), **record, "recipe": cfg.recipe.describe(), "prompts_fingerprint": prompt_set.fingerprint(),
              "dropped_empty_prompts": prompt_set.dropped_empty,
              "dropped_duplicate_prompts": prompt_set.dropped_duplicates}
    out = ShardedOutput(cfg.output, STAGE, identity, len(ranges), config)
    out.check(cfg.overwrite)  # a mismatched folder is refused before any model import
    if not out.finished(cfg.overwrite):  # a finished rerun: nothing to do, no model looked up or loaded
        check_model_available(cfg.model, cfg.vae, whole_pipeline=True)  # before the output folder exists
        check_resolution(cfg.model, cfg.resolution)
        check_t5_options(cfg.model, ["--max-sequence-length"] if cfg.max_sequence_length is not None else [])
        check_negative_prompt(cfg.model, [flag for flag, value in (("--negative-prompt", cfg.recipe.negative_prompt),
                                                                   ("--rejected-negative-prompt",
                                                                    cfg.recipe.rejected_negative_prompt))
                                          if value is not None])
        check_t5_length(cfg.model, cfg.max_sequence_length)
        if cfg.compile:
            check_compile(cfg.model)
    work = _GenerateShards(cfg, out, prompt_set, ranges, device, dtype)
    prompts_info = {"source": prompt_set.source, "count": len(prompt_set.prompts),
                    "dropped_empty": prompt_set.dropped_empty, "dropped_duplicates": prompt_set.dropped_duplicates}
    run = run_sharded(ShardedStage(STAGE, out, work.process_shard, lambda todo: sum(len(ranges[k]) for k in todo),
                                   setup=work.setup, manifest_extra=lambda: {"prompts": prompts_info},
                                   overwrite=cfg.overwrite), proc)
    return GenerateResult(cfg.output, run.totals.get("pairs", 0), len(run.todo), run.skipped, (proc.index, proc.count),
                          time.perf_counter() - t_start, run.loop_seconds, work.pipeline_seconds,
                          prompt_set.dropped_empty, prompt_set.dropped_duplicates)


class _GenerateShards:
    """Generate's part of the sharded run: load the pipeline, then one shard at a time."""

    def __init__(self, cfg: GenerateConfig, out: ShardedOutput, prompt_set, ranges, device, dtype):
        self.cfg, self.out, self.prompt_set, self.ranges, self.device, self.dtype = (
            cfg, out, prompt_set, ranges, device, dtype
        )
        self.pipe = None
        self.shared: dict = {}
        self.pipeline_seconds = 0.0  # inside the diffusion pipeline call

    def setup(self, todo: list[int]) -> None:
        if not todo:
            return
        from pipeline.runtime.batch_invariance import make_batch_invariant

        cfg = self.cfg
        self.pipe = pipe = load_pipeline(cfg.model, vae=cfg.vae, dtype=self.dtype, device=self.device)
        if cfg.batch_invariant:
            make_batch_invariant(pipe)
        if cfg.compile:
            from pipeline.families import family_of_pipe

            compile_unet(family_of_pipe(pipe).denoiser(pipe))
        self.shared = {"intended_chosen": cfg.recipe.intended_chosen, "recipe": cfg.recipe.name,
                       "style": cfg.recipe.describe().get("style"), "width": cfg.resolution, "height": cfg.resolution,
                       "num_inference_steps": cfg.num_inference_steps, "guidance_scale": float(cfg.guidance_scale),
                       "scheduler": type(pipe.scheduler).__name__, "model": cfg.model, "image_format": cfg.image_format}

    def process_shard(self, k: int, pool, bar):
        """Generate shard k's images; encoding and writing overlap with the next shard's generation
        (returns the write's Future)."""
        cfg = self.cfg
        shard_t0 = time.perf_counter()
        batches = []
        items = [self.prompt_set.prompts[i] for i in self.ranges[k]]
        for b in range(0, len(items), cfg.batch_size):
            batch = items[b : b + cfg.batch_size]
            pairs = [(p, req) for p in batch for req in image_requests(cfg.recipe, p.text)]
            requests = [req for _, req in pairs]
            seeds = [derive_seed(cfg.seed, p.id, req.seed_index) for p, req in pairs]
            t0 = time.perf_counter()
            images = generate_images(self.pipe, requests, seeds, cfg, cfg.max_sequence_length)
            self.pipeline_seconds += time.perf_counter() - t0
            blobs = pool.submit(lambda ims: [encode_image(im, cfg.image_format, cfg.quality) for im in ims], images)
            batches.append((batch, requests, seeds, blobs))
            bar.update(len(batch))
        return pool.submit(_write_shard, self.out, k, batches, self.shared, cfg.recipe, shard_t0)

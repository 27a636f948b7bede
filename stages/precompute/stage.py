"""The precompute stage over shards: check the input and the output folder, load the encoders when there is
work, and precompute every pending shard of this process (:func:`run_precompute`)."""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from pipeline.cli.options import options_record
from pipeline.data.latent_shards import STAGE, check_model
from pipeline.data.layouts import open_pairs
from pipeline.data.shards import SPLIT, ShardedOutput, check_output_apart, read_manifest
from pipeline.models.loading import (
    check_model_available,
    check_resolution,
    check_t5_options,
    default_resolution,
    dtype_name,
    load_pipeline,
    model_family_of,
    resolve_device,
    resolve_dtype,
    t5_length_to_record,
)
from pipeline.models.option_checks import check_t5_length
from pipeline.runtime.distributed import accelerator_device, current_process
from pipeline.runtime.stage_runner import ShardedStage, run_sharded

from .config import PrecomputeConfig, PrecomputeResult
from .encode import cast_quietly, describe_encoders, process_shard
from .inputs import PAIRS, InputShape, caption_owners, check_columns, input_shape, num_rows


def _identity(cfg: PrecomputeConfig, input_fp: str, dtype: str, vae_dtype: str, split: str = SPLIT,
              shape: InputShape = PAIRS) -> dict:
    ident = {"input_fingerprint": input_fp, "model": cfg.model, "vae": cfg.vae, "dtype": dtype, "vae_dtype": vae_dtype,
             "resolution": cfg.resolution, "crop": cfg.crop, "flip": cfg.flip, "latent_stats": cfg.latent_stats,
             "storage_dtype": cfg.storage_dtype}
    t5_tokens = t5_length_to_record(cfg.model, cfg.max_sequence_length)  # None at the default, given or not
    if t5_tokens is not None or not cfg.t5:  # only then: older outputs keep their fingerprint
        ident.update(max_sequence_length=t5_tokens, t5=cfg.t5)
    if cfg.crop == "random":
        ident["seed"] = cfg.seed
    if split != SPLIT:  # only then: outputs made before splits were chosen keep their fingerprint
        ident["split"] = split
    if shape is not PAIRS:  # likewise: pair outputs keep their fingerprint
        ident["shape"] = shape.name
    return ident



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
    source = check_columns(files, shape)
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
        check_model_available(cfg.model, cfg.vae, whole_pipeline=True)  # before the output folder exists
        check_resolution(cfg.model, cfg.resolution)
        t5_given = {"--no-t5": not cfg.t5, "--max-sequence-length": cfg.max_sequence_length is not None}
        check_t5_options(cfg.model, [flag for flag, on in t5_given.items() if on])
        check_t5_length(cfg.model, cfg.max_sequence_length)
    work = _PrecomputeShards(cfg, out, files, proc, device, dtype, vae_dtype, shape)
    run = run_sharded(ShardedStage(STAGE, out, work.process_shard, lambda todo: sum(num_rows(files[k]) for k in todo),
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
        skip = (fam.denoiser_dir,) + (() if cfg.t5 or fam.optional_t5 is None else fam.optional_t5)
        self.pipe = pipe = load_pipeline(cfg.model, vae=cfg.vae, dtype=self.dtype, device=self.device, skip=skip)
        if pipe.vae.dtype != self.vae_dtype:
            cast_quietly(pipe.vae, self.vae_dtype)
        if proc.is_main:
            self.description = describe_encoders(pipe, cfg, dtype_name(self.dtype), dtype_name(self.vae_dtype),
                                                 self.shape)
        if self.previous is not None:  # same model id, but are they the same weights as the finished shards'?
            from pipeline.families import family_of_pipe

            encoders = family_of_pipe(pipe).encoder_modules(pipe)
            check_model({"latents": self.previous}, vae=pipe.vae, text_encoders=encoders)
        if todo:
            self.owners = caption_owners(self.files, self.shape)

    def process_shard(self, k: int, pool, bar) -> dict:
        return process_shard(self.pipe, self.out, k, self.files[k], self.owners[k], self.cfg, pool, bar, self.shape)


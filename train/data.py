"""Training data: the precompute output (pipeline.data.latent_shards), checked against the model, as a batch stream.

Raw image shards, other stages' outputs and latents made by another model are refused by the
reader with a message that says to run ``mapo-data precompute``.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.cli.formatting import count
from pipeline.data.latent_shards import LatentDataset, PairSampler, check_model, collate, open_latents
from pipeline.errors import UserError
from pipeline.models.loading import load_pipeline

from . import objectives
from .config import TrainConfig


@dataclass
class TrainData:
    dataset: LatentDataset
    sampler: PairSampler

    @property
    def steps_per_epoch(self) -> int:
        return len(self.sampler)


def open_training_latents(cfg: TrainConfig) -> LatentDataset:
    """The precompute output at ``cfg.data``, checked against what the objective reads (unpaired examples
    only for objectives reading "examples", :mod:`train.objectives`) and ``--random-flip``.

    Raises:
        UserError: unpaired examples for a pairwise objective, or ``--random-flip`` without mirrored latents.
    """
    ds = open_latents(cfg.data)
    if ds.unpaired and cfg.spec.reads != "examples":
        readers = " or ".join(f"--objective {s.name}" for s in objectives.specs() if s.reads == "examples")
        raise UserError(f"'{cfg.data}' holds unpaired examples; use {readers} (--objective {cfg.objective} "
                        "needs preference pairs).")
    if cfg.random_flip and not ds.has_flips:
        raise UserError(f"--random-flip needs mirrored latents, and '{cfg.data}' has none; "
                        "rerun `mapo-data precompute --flip both` or drop --random-flip.")
    return ds


def training_sampler(cfg: TrainConfig, ds: LatentDataset, rank: int, world_size: int) -> PairSampler:
    """This rank's ``PairSampler`` over ``ds`` (drop_last: every optimizer step sees full batches).

    Raises:
        UserError: ``ds`` holds no item (pointing to precompute's rejects), or fewer than one global batch
            (``--batch-size`` x processes);
            the message says the largest ``--batch-size`` that fits (or how many processes at most).
    """
    n, unit = len(ds), ("example" if ds.unpaired else "pair")
    if n == 0:
        raise UserError(f"'{cfg.data}' holds no {unit}s: precompute kept none. Its rejected rows and why are in "
                        f"{cfg.data}/rejects/ (`mapo-data inspect {cfg.data}` summarises them); fix the input and "
                        "rerun precompute.")
    if 0 < n < cfg.batch_size * world_size:
        procs = "process" if world_size == 1 else "processes"
        fix = (f"lower --batch-size to at most {n // world_size}" if n >= world_size
               else f"launch at most {n} processes")
        raise UserError(f"{count(n, unit)} is fewer than one global batch (--batch-size {cfg.batch_size} x "
                        f"{world_size} {procs}); {fix}, or add data.")
    return PairSampler(n, cfg.batch_size, cfg.seed, rank, world_size, drop_last=True, flip=cfg.random_flip)


def optimizer_steps_per_epoch(batches_per_epoch: int, accumulation: int) -> int:
    """Optimizer steps in one epoch of ``batches_per_epoch`` micro-batches: ``ceil(batches / accumulation)``.

    The last step of an epoch takes the micro-batches left (:func:`micro_batches_this_step`), as diffusers'
    training scripts do (``math.ceil(len(train_dataloader) / gradient_accumulation_steps)`` steps per epoch,
    accelerate syncing at the dataloader's end), so ``--num-epochs N`` visits every pair N times.
    """
    return -(-batches_per_epoch // accumulation)


def micro_batches_this_step(sampler, accumulation: int) -> int:
    """How many micro-batches the next optimizer step takes: ``accumulation``, or the fewer left in the epoch,
    so that no step spans two epochs and none sees a pair twice.

    ``sampler``: a :class:`~pipeline.data.latent_shards.PairSampler` (``len`` = batches per epoch; ``position`` =
    batches of the current epoch handed out, ``len`` when the epoch has just ended). The same on every rank
    (positions count global batches), so every rank accumulates the same number of micro-batches.
    """
    left = len(sampler) - sampler.position
    return min(accumulation, left if left > 0 else len(sampler))


def open_training_data(cfg: TrainConfig, rank: int, world_size: int) -> TrainData:
    """The latents and this rank's sampler, without the model check (the trainer runs
    :func:`check_data_matches_model` between the two, so a model mismatch is reported first)."""
    ds = open_training_latents(cfg)
    return TrainData(ds, training_sampler(cfg, ds, rank, world_size))


def check_data_matches_model(ds: LatentDataset, model: str, unet_family: str, unet_in_channels: int):
    """Refuse latents made by another model; returns the (CPU, fp32) text/VAE pipeline it loaded.

    The VAE and text encoders are only read here, never run: the reader compares their weights
    with the ones recorded at precompute time. The caller reuses the pipeline for validation images.
    """
    if ds.family != unet_family:
        from pipeline.families import a_family

        raise UserError(f"'{ds.root}' holds {ds.family} latents but '{model}' is {a_family(unet_family)} model; "
                        f"rerun `mapo-data precompute --model {model}` into a new --output.")
    channels = ds.info["latent_shape"][0]
    if channels != unet_in_channels:
        raise UserError(f"'{ds.root}' holds {channels}-channel latents but the UNet of '{model}' takes "
                        f"{unet_in_channels}; rerun `mapo-data precompute --model {model}`.")
    from pipeline.families import get_family

    family = get_family(unet_family)
    # Latents made without T5 (precompute --no-t5) are trained and sampled without it.
    no_t5 = (family.optional_t5 or ()) if ds.info.get("t5") is False else ()
    pipe = load_pipeline(model, vae=ds.info.get("vae"), device="cpu", dtype="fp32",
                         skip=(family.denoiser_dir, *no_t5))
    check_model(ds, vae=pipe.vae, text_encoders=family.encoder_modules(pipe))
    return pipe


def to_compute(batch: dict, device, dtype=None) -> dict:
    """The batch on ``device``, every floating tensor in ONE compute dtype (fp32 by default).

    This is the only place the trainer casts its inputs. The latent reader hands out the
    storage dtype (fp16 or bf16 latents and prompt embeddings) beside fp32 pooled embeddings
    and time ids; the UNet's trainable (master) weights are fp32, so its inputs are cast to
    fp32 here and mixed precision is left to autocast. Feeding the storage dtype instead
    breaks under CPU bf16 autocast, whose type promotion knows no fp16 (``torch.cat`` of fp16
    latents raised "Unexpected floating ScalarType in at::autocast::prioritize").

    ``batch``: ``collate`` output, e.g. "latents" ``[B, 2, C, h, w]``, "prompt_embeds"
    ``[B, 77, D]``, SDXL's "pooled_prompt_embeds" ``[B, P]`` and "add_time_ids" ``[B, 6]``;
    non-tensor values (ids, flips) pass through, integer tensors keep their dtype.
    Returns a new dict; shapes are unchanged.
    """
    import torch

    dtype = torch.float32 if dtype is None else dtype
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, dtype=dtype if value.is_floating_point() else None, non_blocking=True)
        out[key] = value
    return out


def batch_stream(data: TrainData, device, dtype=None):
    """Endless batches for this rank (epoch after epoch), continuing from the sampler's position.

    Each batch goes through :func:`to_compute`: on ``device``, floating tensors in ``dtype``
    (default fp32, whatever the storage dtype).
    """
    while True:
        for indices in data.sampler:
            items = [data.dataset[i] for i in indices]
            yield to_compute(collate(items), device, dtype)

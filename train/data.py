"""Training data: the precompute output (pipeline.latent_shards), checked against the model, as a batch stream.

Raw image shards, other stages' outputs and latents made by another model are refused by the
reader with a message that says to run ``mapo-data precompute``.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import UserError
from pipeline.latent_shards import LatentDataset, PairSampler, check_model, collate, open_latents
from pipeline.models import load_pipeline

from .config import TrainConfig


@dataclass
class TrainData:
    dataset: LatentDataset
    sampler: PairSampler

    @property
    def steps_per_epoch(self) -> int:
        return len(self.sampler)


def open_training_data(cfg: TrainConfig, rank: int, world_size: int) -> TrainData:
    ds = open_latents(cfg.data)
    if cfg.random_flip and not ds.has_flips:
        raise UserError(f"--random-flip needs mirrored latents, and '{cfg.data}' has none; "
                        "rerun `mapo-data precompute --flip both` or drop --random-flip.")
    sampler = PairSampler(len(ds), cfg.batch_size, cfg.seed, rank, world_size, drop_last=True, flip=cfg.random_flip)
    return TrainData(ds, sampler)


def check_data_matches_model(ds: LatentDataset, model: str, unet_family: str, unet_in_channels: int):
    """Refuse latents made by another model; returns the (CPU, fp32) text/VAE pipeline it loaded.

    The VAE and text encoders are only read here, never run: the reader compares their weights
    with the ones recorded at precompute time. The caller reuses the pipeline for validation images.
    """
    if ds.family != unet_family:
        raise UserError(f"'{ds.root}' holds {ds.family} latents but '{model}' is an {unet_family} model; "
                        f"rerun `mapo-data precompute --model {model}` into a new --output.")
    channels = ds.info["latent_shape"][0]
    if channels != unet_in_channels:
        raise UserError(f"'{ds.root}' holds {channels}-channel latents but the UNet of '{model}' takes "
                        f"{unet_in_channels}; rerun `mapo-data precompute --model {model}`.")
    pipe = load_pipeline(model, vae=ds.info.get("vae"), device="cpu", dtype="fp32", skip=("unet",))
    encoders = [te for te in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if te is not None]
    check_model(ds, vae=pipe.vae, text_encoders=encoders)
    return pipe


def batch_stream(data: TrainData, device):
    """Endless batches for this rank (epoch after epoch), continuing from the sampler's position."""
    import torch

    while True:
        for indices in data.sampler:
            items = [data.dataset[i] for i in indices]
            batch = collate(items)
            yield {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}

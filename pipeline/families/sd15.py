"""Stable Diffusion 1.x/2.x: one CLIP text encoder (last hidden state, 77 tokens), a UNet, DDPM."""
from __future__ import annotations

from .base import ModelFamily


class SD15(ModelFamily):
    name = "sd15"
    pipeline_class = "StableDiffusionPipeline"
    fit_keys = ("in_channels", "cross_attention_dim", "addition_embed_type", "addition_time_embed_dim",
                "projection_class_embeddings_input_dim")

    @classmethod
    def matches_index(cls, index: dict) -> bool:
        # Any UNet pipeline without a second text encoder (SD1.x/2.x and their custom pipeline classes).
        return (index.get("unet") or [None])[0] is not None and (index.get("text_encoder_2") or [None])[0] is None

    @classmethod
    def matches_denoiser(cls, config) -> bool:
        return "cross_attention_dim" in config and config.get("addition_embed_type") != "text_time"

    @classmethod
    def matches_pipe(cls, pipe) -> bool:
        return hasattr(pipe, "unet")  # asked last: a UNet pipeline that is not SDXL's

"""Stable Diffusion XL: two CLIP text encoders (penultimate hidden states concatenated, 77 x 2048) plus text
encoder 2's pooled projection, six micro-conditioning time ids, a UNet, DDPM (Podell et al. 2023, arXiv
2307.01952, section 2.2)."""
from __future__ import annotations

from .base import ModelFamily
from .sd15 import SD15


class SDXL(ModelFamily):
    name = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"
    text_encoders = ("text_encoder", "text_encoder_2")
    tokenizers = ("tokenizer", "tokenizer_2")
    pooled = True
    time_ids = True
    fit_keys = SD15.fit_keys

    @classmethod
    def matches_index(cls, index: dict) -> bool:
        return (index.get("unet") or [None])[0] is not None and (index.get("text_encoder_2") or [None])[0] is not None

    @classmethod
    def matches_denoiser(cls, config) -> bool:
        return config.get("addition_embed_type") == "text_time"

    @classmethod
    def matches_pipe(cls, pipe) -> bool:
        return getattr(pipe, "text_encoder_2", None) is not None or getattr(pipe, "tokenizer_2", None) is not None

    @classmethod
    def encode_prompt(cls, pipe, prompts, negative_prompts, guidance: bool, device, max_sequence_length=None):
        return pipe.encode_prompt(prompt=prompts, device=device, num_images_per_prompt=1,
                                  do_classifier_free_guidance=guidance, negative_prompt=negative_prompts)

    @classmethod
    def text_shapes(cls, pipe, max_sequence_length=None):
        dim = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
        return [pipe.tokenizer.model_max_length, dim], pipe.text_encoder_2.config.projection_dim

    @classmethod
    def conditioning(cls, batch: dict, k: int) -> dict:
        return {"encoder_hidden_states": batch["prompt_embeds"].repeat(k, 1, 1),
                "added_cond_kwargs": {"text_embeds": batch["pooled_prompt_embeds"].repeat(k, 1),
                                      "time_ids": batch["add_time_ids"].repeat(k, 1)}}

"""Text conditioning exactly as the diffusers pipelines compute it.

SDXL: penultimate hidden states of both text encoders concatenated (77 x 2048) plus text
encoder 2's pooled projection (1280); SD1.5: the one encoder's last hidden state (77 x 768).
Generation, precompute and training all go through ``encode_text`` so the embeddings a model
is trained on are the ones it is sampled with.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: torch is imported lazily to keep CLI start-up fast
    import torch

from dataclasses import dataclass


@dataclass
class TextEmbeddings:
    prompt_embeds: "torch.Tensor"
    pooled: "torch.Tensor | None" = None  # SDXL only
    negative_prompt_embeds: "torch.Tensor | None" = None
    negative_pooled: "torch.Tensor | None" = None

    def pipeline_kwargs(self) -> dict:
        kw = {"prompt_embeds": self.prompt_embeds, "negative_prompt_embeds": self.negative_prompt_embeds}
        if self.pooled is not None:
            kw["pooled_prompt_embeds"] = self.pooled
            kw["negative_pooled_prompt_embeds"] = self.negative_pooled
        return kw


def is_sdxl(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None or getattr(pipe, "tokenizer_2", None) is not None


def encode_text(pipe, prompts: list[str], negative_prompts: list[str | None] | None = None, *, guidance: bool = False) -> TextEmbeddings:
    """Encode ``prompts`` (and negatives when ``guidance``) with the pipeline's own encode_prompt."""
    import torch

    device = pipe._execution_device if hasattr(pipe, "_execution_device") else pipe.device
    with torch.inference_mode():
        if is_sdxl(pipe):
            pe, npe, pooled, npooled = pipe.encode_prompt(
                prompt=prompts,
                device=device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=guidance,
                negative_prompt=negative_prompts,
            )
            return TextEmbeddings(pe, pooled, npe, npooled)
        pe, npe = pipe.encode_prompt(
            prompts, device, 1, guidance, negative_prompt=negative_prompts
        )
        return TextEmbeddings(pe, None, npe, None)


def concat_embeddings(parts: list[TextEmbeddings]) -> TextEmbeddings:
    import torch

    def cat(name):
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else torch.cat(values)

    return TextEmbeddings(*(cat(n) for n in ("prompt_embeds", "pooled", "negative_prompt_embeds", "negative_pooled")))

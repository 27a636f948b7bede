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

import contextlib
import sys
from dataclasses import dataclass

# Prompts longer than a text encoder's context (77 CLIP tokens), noted by encode_text and said once
# per stage by report_truncation instead of the libraries' per-call warnings.
_TRUNCATED: dict[str, int] = {}  # text -> the token limit it was cut to


@dataclass
class TextEmbeddings:
    prompt_embeds: "torch.Tensor"
    pooled: "torch.Tensor | None" = None  # SDXL and SD3 only
    negative_prompt_embeds: "torch.Tensor | None" = None
    negative_pooled: "torch.Tensor | None" = None

    def pipeline_kwargs(self) -> dict:
        kw = {"prompt_embeds": self.prompt_embeds, "negative_prompt_embeds": self.negative_prompt_embeds}
        if self.pooled is not None:
            kw["pooled_prompt_embeds"] = self.pooled
            kw["negative_pooled_prompt_embeds"] = self.negative_pooled
        return kw


@contextlib.contextmanager
def quiet_truncation_warnings():
    """Silence diffusers' "The following part of your input was truncated ..." and transformers'
    "Token indices sequence length is longer ..." warnings (one per call, full of ``<|endoftext|>``,
    breaking progress bars); callers note truncation with :func:`note_truncation` instead."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])


def note_truncation(pipe, texts) -> None:
    """Remember which of ``texts`` the pipeline's first tokenizer cuts to its ``model_max_length``."""
    tokenizer = getattr(pipe, "tokenizer", None) or getattr(pipe, "tokenizer_2", None)
    limit = getattr(tokenizer, "model_max_length", None)
    if tokenizer is None or not limit or limit > 100_000:
        return
    with quiet_truncation_warnings():
        for text in texts:
            if text and text not in _TRUNCATED and len(tokenizer(text).input_ids) > limit:
                _TRUNCATED[text] = int(limit)


def report_truncation(tag: str) -> int:
    """Say once on stderr how many distinct prompt texts were truncated since the last report (a recipe's
    prefixed and plain versions of a prompt count apart), and forget them; returns the count."""
    count = len(_TRUNCATED)
    if count:
        limit = max(_TRUNCATED.values())
        print(f"{tag}: {count} prompt{'s were' if count > 1 else ' was'} truncated to {limit} tokens "
              "(the text encoders' context; a recipe's prefixed and plain prompts count apart); only their start "
              "conditions the images", file=sys.stderr)
    _TRUNCATED.clear()
    return count


def reset_truncation() -> None:
    """Forget noted truncations (a stage starting: nothing left over from an earlier call in this process)."""
    _TRUNCATED.clear()


def encode_text(
    pipe, prompts: list[str], negative_prompts: list[str | None] | None = None, *, guidance: bool = False,
    max_sequence_length: int | None = None,
) -> TextEmbeddings:
    """Encode ``prompts`` (and negatives when ``guidance``) as the pipeline's own encode_prompt does (the
    model family's :meth:`~pipeline.families.base.ModelFamily.encode_prompt`).

    ``max_sequence_length``: T5 tokens of a family with a T5 encoder (SD3; default the pipeline's 256).

    Prompts longer than the tokenizer's context are truncated as the pipeline does, noted for
    :func:`report_truncation`, and not warned about per call.
    """
    import torch

    from pipeline.families import family_of_pipe

    extra = {"max_sequence_length": max_sequence_length} if max_sequence_length else {}
    note_truncation(pipe, [*prompts, *(negative_prompts or [])])
    device = pipe._execution_device if hasattr(pipe, "_execution_device") else pipe.device
    with torch.inference_mode(), quiet_truncation_warnings():
        pe, npe, pooled, npooled = family_of_pipe(pipe).encode_prompt(pipe, prompts, negative_prompts, guidance,
                                                                        device, **extra)
        return TextEmbeddings(pe, pooled, npe, npooled)


def concat_embeddings(parts: list[TextEmbeddings]) -> TextEmbeddings:
    import torch

    def cat(name):
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else torch.cat(values)

    return TextEmbeddings(*(cat(n) for n in ("prompt_embeds", "pooled", "negative_prompt_embeds", "negative_pooled")))

"""Stable Diffusion 3 / 3.5: an MMDiT transformer, rectified flow, three text encoders (Esser et al. 2024,
arXiv 2403.03206, section 5.2; diffusers' ``StableDiffusion3Pipeline.encode_prompt``).

prompt_embeds ``[B, 77 + L, D]``: CLIP-L and CLIP-G penultimate hidden states concatenated (77 x 2048),
zero-padded to the transformer's ``joint_attention_dim`` D (4096), followed by T5's last hidden state for
``L = max_sequence_length`` tokens (256 by default, the pipeline's) or zeros when the pipeline has no T5
(``text_encoder_3=None``, as diffusers allows). pooled ``[B, 2048]``: the two CLIP projections concatenated.
Images sides are multiples of 16 (VAE /8 times patch size 2).
"""
from __future__ import annotations

from .base import ModelFamily

DEFAULT_MAX_SEQUENCE_LENGTH = 256  # StableDiffusion3Pipeline.__call__ / encode_prompt


class SD3(ModelFamily):
    name = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"
    denoiser_dir = "transformer"
    denoiser_class = "SD3Transformer2DModel"
    text_encoders = ("text_encoder", "text_encoder_2", "text_encoder_3")
    tokenizers = ("tokenizer", "tokenizer_2", "tokenizer_3")
    pooled = True
    pooled_kwarg = "pooled_projections"
    size_multiple = 16
    flow = True
    denoiser_keys = ("pooled_projection_dim", "joint_attention_dim", "caption_projection_dim")
    fit_keys = ("in_channels", "joint_attention_dim", "pooled_projection_dim", "patch_size", "num_layers",
                "attention_head_dim", "num_attention_heads")
    max_sequence_length = DEFAULT_MAX_SEQUENCE_LENGTH
    max_sequence_length_limit = 512  # StableDiffusion3Pipeline.check_inputs refuses more (diffusers 0.42)
    optional_t5 = ("text_encoder_3", "tokenizer_3")
    # Both streams of the joint attention: the image stream's to_q/k/v/out.0 and the text (context) stream's
    # add_q/k/v_proj and to_add_out, as diffusers' examples/dreambooth/train_dreambooth_lora_sd3.py (its default
    # without --lora_layers; huggingface/diffusers 58eb52c, lines 1251-1260). "attn." leaves SD3.5's second,
    # image-only attention (attn2) out, as there.
    lora_target_modules = ("attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
                           "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v")

    @classmethod
    def matches_index(cls, index: dict) -> bool:
        return (index.get("transformer") or [None, None])[1] == cls.denoiser_class

    @classmethod
    def matches_pipe(cls, pipe) -> bool:
        return hasattr(pipe, "transformer") and hasattr(pipe, "text_encoder_3")

    @classmethod
    def joint_attention_dim(cls, pipe) -> int:
        """The transformer's text width D, read from its config when the transformer is not loaded."""
        if getattr(pipe, "transformer", None) is not None:
            return int(pipe.transformer.config.joint_attention_dim)
        dim = getattr(pipe, "_mapo_joint_attention_dim", None)
        if dim is None:
            from diffusers import SD3Transformer2DModel

            dim = SD3Transformer2DModel.load_config(pipe.config._name_or_path, subfolder="transformer")[
                "joint_attention_dim"]
            pipe._mapo_joint_attention_dim = dim
        return int(dim)

    @classmethod
    def _encode(cls, pipe, prompts, device, max_len: int):
        import torch

        clip, pooled = [], []
        for i in (0, 1):
            pe, pool = pipe._get_clip_prompt_embeds(prompt=prompts, device=device, num_images_per_prompt=1,
                                                    clip_skip=None, clip_model_index=i)
            clip.append(pe)
            pooled.append(pool)
        clip_embeds = torch.cat(clip, dim=-1)
        dim = cls.joint_attention_dim(pipe)
        if getattr(pipe, "text_encoder_3", None) is not None:
            t5 = pipe._get_t5_prompt_embeds(prompt=prompts, num_images_per_prompt=1, max_sequence_length=max_len,
                                            device=device)
        else:
            t5 = torch.zeros((len(prompts), max_len, dim), device=device, dtype=clip_embeds.dtype)
        clip_embeds = torch.nn.functional.pad(clip_embeds, (0, dim - clip_embeds.shape[-1]))
        return torch.cat([clip_embeds, t5.to(clip_embeds.dtype)], dim=-2), torch.cat(pooled, dim=-1)

    @classmethod
    def encode_prompt(cls, pipe, prompts, negative_prompts, guidance: bool, device, max_sequence_length=None):
        max_len = int(max_sequence_length or cls.max_sequence_length)
        pe, pooled = cls._encode(pipe, list(prompts), device, max_len)
        if not guidance:
            return pe, None, pooled, None
        negs = [n or "" for n in (negative_prompts or [""] * len(prompts))]
        npe, npooled = cls._encode(pipe, negs, device, max_len)
        return pe, npe, pooled, npooled

    @classmethod
    def text_shapes(cls, pipe, max_sequence_length=None):
        max_len = int(max_sequence_length or cls.max_sequence_length)
        pooled = pipe.text_encoder.config.projection_dim + pipe.text_encoder_2.config.projection_dim
        return [pipe.tokenizer.model_max_length + max_len, cls.joint_attention_dim(pipe)], pooled

    @classmethod
    def prompt_tokens(cls, max_sequence_length=None) -> int:
        return 77 + int(max_sequence_length or cls.max_sequence_length)  # CLIP's 77 rows, then T5's

    @classmethod
    def predict(cls, model, x_t, timestep, cond: dict):
        return model(hidden_states=x_t, timestep=timestep, **cond, return_dict=False)[0]

    @classmethod
    def save_lora(cls, layers: dict, output_dir: str, metadata: dict) -> None:
        cls.pipeline_cls().save_lora_weights(output_dir, transformer_lora_layers=layers, safe_serialization=True,
                                             transformer_lora_adapter_metadata=metadata)

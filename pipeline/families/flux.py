"""Flux.1 (Black Forest Labs; diffusers' ``FluxPipeline``): a rectified-flow transformer
(``FluxTransformer2DModel``: double-stream then single-stream blocks, rotary position ids) on 16-channel VAE
latents packed 2x2 into tokens of 64 channels, conditioned on T5's last hidden state and CLIP-L's pooled output.

Text (``FluxPipeline.encode_prompt``): prompt_embeds ``[B, L, D]``, T5's last hidden state for
``L = max_sequence_length`` tokens (512 by default, the pipeline's and Flux.1-dev's; D = 4096 at full size);
pooled ``[B, P]``, CLIP-L's ``pooler_output`` (768). T5 is required (the pipeline has no ``text_encoder_2=None``
path), so ``--no-t5`` is refused. Flux.1-dev is guidance-distilled: ``guidance_scale`` is an input of the
transformer (``guidance_embeds=True``), not a classifier-free guidance pass on a negative prompt, so no negative
embeddings are made (:attr:`cfg_negative_prompt` False).

Training (diffusers' ``examples/dreambooth/train_dreambooth_lora_flux.py``): latents stay ``[N, 16, h, w]`` in the
shards, the losses and the noise process; :meth:`Flux.predict` packs ``x_t`` 2x2 (``FluxPipeline._pack_latents``),
builds the image ids (``_prepare_latent_image_ids``) and the zero text ids, passes the fixed guidance
:data:`TRAINING_GUIDANCE` and ``timestep / 1000`` (the sigma: Flux's transformer takes it in [0, 1], as the
pipeline's loop divides by 1000), and unpacks the prediction. The noise process is the rectified flow of
:mod:`.noise` over the model's scheduler: Flux.1-dev's scheduler config sets ``use_dynamic_shifting``, so its
training sigmas are unshifted (``FlowMatchEulerDiscreteScheduler`` only applies the static ``shift`` without
dynamic shifting) and sigma is drawn uniformly over them (``weighting_scheme`` "none"), as diffusers' Flux training
script does by default; the resolution-dependent shift ``mu`` (``calculate_shift``) is applied at sampling only, by
the pipeline, as there.
Image sides are multiples of 16 (VAE /8 times the 2x2 packing).
"""
from __future__ import annotations

from .base import ModelFamily

DEFAULT_MAX_SEQUENCE_LENGTH = 512  # FluxPipeline.__call__ / encode_prompt (Flux.1-dev)
# The guidance input during training: diffusers' train_dreambooth_(lora_)flux.py --guidance_scale default, and
# FluxPipeline's own default guidance_scale, so the model is trained at the guidance it is sampled with.
TRAINING_GUIDANCE = 3.5
# FluxPipeline.default_sample_size: the latent side the pipeline defaults to (x 8 = 1024 px); Flux's transformer
# config has no sample_size.
DEFAULT_SAMPLE_SIZE = 128


def _config(model):
    """A denoiser's diffusers config through DDP / torch.compile wrappers."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return model.config


class Flux(ModelFamily):
    name = "flux"
    pipeline_class = "FluxPipeline"
    denoiser_dir = "transformer"
    denoiser_class = "FluxTransformer2DModel"
    text_encoders = ("text_encoder", "text_encoder_2")
    tokenizers = ("tokenizer", "tokenizer_2")
    pooled = True
    pooled_kwarg = "pooled_projections"
    size_multiple = 16
    flow = True
    cfg_negative_prompt = False
    # diffusers' train_dreambooth_(lora_)flux.py --weighting_scheme default: "none", uniform u (SD3's script: logit-
    # normal), then the scheduler's sigma at floor(u T).
    flow_weighting_scheme = "none"
    unbatched_inputs = ("txt_ids", "img_ids")  # [L, 3] and [S, 3] position ids, shared by the batch
    denoiser_keys = ("guidance_embeds", "axes_dims_rope", "num_single_layers")
    fit_keys = ("in_channels", "joint_attention_dim", "pooled_projection_dim", "patch_size", "num_layers",
                "num_single_layers", "attention_head_dim", "num_attention_heads", "guidance_embeds")
    max_sequence_length = DEFAULT_MAX_SEQUENCE_LENGTH
    max_sequence_length_limit = 512  # FluxPipeline.check_inputs refuses more (diffusers 0.42)
    optional_t5 = None
    # diffusers' train_dreambooth_lora_flux.py default target modules (without --lora_layers): both attention
    # streams and both feed-forwards of the double blocks; "attn.to_*" also matches the single blocks' attention.
    lora_target_modules = ("attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
                           "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v",
                           "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")

    # ------------------------------------------------------------------ recognising a model
    @classmethod
    def matches_index(cls, index: dict) -> bool:
        # The text-to-image pipeline only: FLUX.1 Fill, Depth, Canny and Kontext share the transformer class but
        # widen its input (in_channels 384, 128, ...) with conditioning channels, so in_channels / 4 is not their
        # latent count; they are refused as pipelines mapo-tools does not support.
        return (index.get("_class_name") == cls.pipeline_class
                and (index.get("transformer") or [None, None])[1] == cls.denoiser_class)

    @classmethod
    def matches_pipe(cls, pipe) -> bool:
        # Asked after SD3 (which has text_encoder_3) and before SDXL (which also has a text_encoder_2).
        return hasattr(pipe, "transformer") and hasattr(pipe, "text_encoder_2") and not hasattr(pipe, "text_encoder_3")

    # ------------------------------------------------------------------ latents
    @classmethod
    def latent_channels(cls, config) -> int:
        return int(config["in_channels"]) // 4

    @classmethod
    def default_sample_size(cls, config) -> int:
        return int(config.get("sample_size") or DEFAULT_SAMPLE_SIZE)

    @staticmethod
    def pack(latents):
        """``[N, C, h, w]`` -> ``[N, (h/2)(w/2), 4C]`` (``FluxPipeline._pack_latents``; h, w even)."""
        n, c, h, w = latents.shape
        x = latents.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(n, (h // 2) * (w // 2), c * 4)

    @staticmethod
    def unpack(tokens, h: int, w: int):
        """``[N, (h/2)(w/2), 4C]`` -> ``[N, C, h, w]``, the inverse of :meth:`pack`
        (``FluxPipeline._unpack_latents`` with the latent side given instead of the pixel side)."""
        n, _, d = tokens.shape
        x = tokens.view(n, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(n, d // 4, h, w)

    @classmethod
    def pipeline_latents(cls, pipe, latents):
        return cls.pack(latents)

    # ------------------------------------------------------------------ text conditioning
    @classmethod
    def encode_prompt(cls, pipe, prompts, negative_prompts, guidance: bool, device, max_sequence_length=None):
        """FluxPipeline.encode_prompt's ``(prompt_embeds [B, L, D], pooled [B, P])``; no negatives (guidance is the
        transformer's input, not a second pass), whatever ``guidance`` and ``negative_prompts`` say."""
        max_len = int(max_sequence_length or cls.max_sequence_length)
        pe, pooled, _ = pipe.encode_prompt(prompt=list(prompts), prompt_2=None, device=device,
                                           num_images_per_prompt=1, max_sequence_length=max_len)
        return pe, None, pooled, None

    @classmethod
    def text_shapes(cls, pipe, max_sequence_length=None):
        max_len = int(max_sequence_length or cls.max_sequence_length)
        return [max_len, int(pipe.text_encoder_2.config.d_model)], int(pipe.text_encoder.config.hidden_size)

    @classmethod
    def prompt_tokens(cls, max_sequence_length=None) -> int:
        return int(max_sequence_length or cls.max_sequence_length)  # T5's rows only (CLIP-L gives the pooled)

    # ------------------------------------------------------------------ the denoiser on a training batch
    @classmethod
    def predict(cls, model, x_t, timestep, cond: dict):
        """The velocity ``[N, C, h, w]`` for ``x_t`` ``[N, C, h, w]`` at ``timestep`` ``[N]`` (sigma * 1000, as the
        noise process gives it): the transformer called as ``FluxPipeline.__call__``'s denoising loop calls it
        (packed tokens, image ids over the (h/2, w/2) grid, zero text ids, ``timestep / 1000``, guidance
        :data:`TRAINING_GUIDANCE` when the transformer embeds guidance, else None)."""
        import torch

        n, _, h, w = x_t.shape
        config = _config(model)
        ids = torch.zeros(h // 2, w // 2, 3)
        ids[..., 1] += torch.arange(h // 2)[:, None]
        ids[..., 2] += torch.arange(w // 2)[None, :]
        img_ids = ids.reshape(-1, 3).to(device=x_t.device, dtype=x_t.dtype)
        states = cond["encoder_hidden_states"]
        txt_ids = torch.zeros(states.shape[1], 3, device=x_t.device, dtype=x_t.dtype)
        guidance = (torch.full((n,), TRAINING_GUIDANCE, device=x_t.device, dtype=torch.float32)
                    if config.guidance_embeds else None)
        out = model(hidden_states=cls.pack(x_t), timestep=timestep / 1000, guidance=guidance, txt_ids=txt_ids,
                    img_ids=img_ids, **cond, return_dict=False)[0]
        return cls.unpack(out, h, w)

    # ------------------------------------------------------------------ saving
    @classmethod
    def save_lora(cls, layers: dict, output_dir: str, metadata: dict) -> None:
        cls.pipeline_cls().save_lora_weights(output_dir, transformer_lora_layers=layers, safe_serialization=True,
                                             transformer_lora_adapter_metadata=metadata)

"""The model-family protocol: everything that differs between SD1.5, SDXL, SD3 ... in one small class.

A family says how to recognise its models (``model_index.json``), which diffusers classes hold its
pipeline and its denoiser (UNet or transformer) and where the denoiser lives in the folder, how prompts
become the denoiser's conditioning (and what precompute stores for them), how the denoiser is called on
a training batch, which denoiser modules a LoRA adapts and how it is saved, the image-side multiple, and its
noise process
(:mod:`pipeline.families.noise`). Code outside ``pipeline/families/`` asks the family instead of testing
for ``text_encoder_2`` or ``addition_embed_type``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import torch


class ModelFamily:
    """One model family. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str]  # "sd15" | "sdxl" | "sd3" | "flux": written in manifests and training configs
    pipeline_class: ClassVar[str]  # the diffusers text-to-image pipeline class
    denoiser_dir: ClassVar[str] = "unet"  # the denoiser's subfolder in a diffusers pipeline folder
    denoiser_class: ClassVar[str] = "UNet2DConditionModel"
    text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder",)  # pipeline components, in order
    tokenizers: ClassVar[tuple[str, ...]] = ("tokenizer",)
    # Batch keys of the precomputed text conditioning besides "prompt_embeds" (pipeline.data.latent_shards)
    pooled: ClassVar[bool] = False  # "pooled_prompt_embeds" [B, P]
    # The denoiser's keyword for the pooled embedding, when it takes it as its own argument (transformers:
    # "pooled_projections"; SDXL's UNet takes it inside added_cond_kwargs, its own conditioning)
    pooled_kwarg: ClassVar[str | None] = None
    time_ids: ClassVar[bool] = False  # "add_time_ids" [B, 6] (SDXL's micro-conditioning)
    size_multiple: ClassVar[int] = 8  # image sides: the VAE's /8, times the transformer's patch size
    flow: ClassVar[bool] = False  # rectified flow (True) or DDPM (False)
    # Whether ``guidance_scale > 1`` means classifier-free guidance against a negative prompt (its embeddings made
    # and passed to the pipeline), True; False: the denoiser takes the guidance as an input (Flux.1-dev, guidance-
    # distilled), no negative prompt is used, and one given is refused.
    cfg_negative_prompt: ClassVar[bool] = True
    # Rectified flow: how training draws sigma (diffusers' compute_density_for_timestep_sampling weighting_scheme);
    # None: FlowSampling's default, logit-normal as diffusers' SD3 training script.
    flow_weighting_scheme: ClassVar[str | None] = None
    # The denoiser's keyword inputs that are not batched (no batch dimension, whatever their first dimension):
    # batch-invariant sampling (pipeline.runtime.batch_invariance) passes them whole to each one-sample call.
    unbatched_inputs: ClassVar[tuple[str, ...]] = ()
    # A T5 text encoder: its default token count when the count is a choice (``--max-sequence-length``; None: no
    # such encoder), and the (encoder, tokenizer) components when it can be left out (``--no-t5``: zeros in its
    # place, as StableDiffusion3Pipeline with text_encoder_3=None; None: it cannot).
    max_sequence_length: ClassVar[int | None] = None
    # The most T5 tokens the family's pipeline samples with (None: no limit, or no T5): a count above it would be
    # trained and recorded, then refused by the pipeline in every plain-diffusers load of the output.
    max_sequence_length_limit: ClassVar[int | None] = None
    optional_t5: ClassVar[tuple[str, str] | None] = None
    # Config keys that only this family's denoiser has (recognises a config without ``_class_name``; empty: none).
    denoiser_keys: ClassVar[tuple[str, ...]] = ()
    # Denoiser config keys a trained denoiser or LoRA must share with the pipeline it is put into.
    fit_keys: ClassVar[tuple[str, ...]] = ()
    # The denoiser's modules ``mapo-train --lora-rank`` adapts by default (peft ``target_modules``: a name matches
    # a module whose dotted path equals it or ends with "." + it). UNets: the attention projections of every
    # transformer block, as diffusers' train_text_to_image_lora(_sdxl).py.
    lora_target_modules: ClassVar[tuple[str, ...]] = ("to_k", "to_q", "to_v", "to_out.0")

    # ------------------------------------------------------------------ recognising a model
    @classmethod
    def matches_index(cls, index: dict) -> bool:
        """Whether a pipeline's ``model_index.json`` (as a dict) is this family's."""
        return index.get("_class_name") == cls.pipeline_class

    @classmethod
    def matches_denoiser(cls, config) -> bool:
        """Whether a denoiser's config (dict-like) is this family's: its ``_class_name`` is
        :attr:`denoiser_class`, or (a config without the class name) it has every key of :attr:`denoiser_keys`."""
        if config.get("_class_name") == cls.denoiser_class:
            return True
        return bool(cls.denoiser_keys) and all(key in config for key in cls.denoiser_keys)

    @classmethod
    def matches_pipe(cls, pipe) -> bool:
        """Whether a loaded pipeline is this family's, asked in :data:`pipeline.families.FAMILIES` order (so a
        family may rely on the ones before it having said no). Its components may be None (skipped at load
        time), so a family looks at which components the pipeline class has, not at the modules."""
        return False

    # ------------------------------------------------------------------ latents
    @classmethod
    def latent_channels(cls, config) -> int:
        """Channels C of the VAE latents ``[N, C, h, w]`` the denoiser (config, dict-like) works on; the denoiser's
        ``in_channels`` unless it packs latents into wider tokens (Flux: in_channels / 4)."""
        return int(config["in_channels"])

    @classmethod
    def default_sample_size(cls, config) -> int:
        """The latent side the family's pipeline defaults to (pixels / the VAE's scale factor), from the denoiser
        config (dict-like): its ``sample_size``, as the UNet and SD3 pipelines read it.

        Raises:
            KeyError: the config has no ``sample_size``."""
        return int(config["sample_size"])

    @classmethod
    def pipeline_latents(cls, pipe, latents: "torch.Tensor") -> "torch.Tensor":
        """``latents`` ``[N, C, h, w]`` (e.g. initial noise) in the layout the pipeline's ``latents=`` argument
        takes: unchanged, unless the pipeline packs them (Flux)."""
        return latents

    @classmethod
    def noise_process(cls, scheduler):
        """The training noise process over ``scheduler`` (:func:`pipeline.families.noise.noise_process`), with this
        family's sigma sampling when it is a flow model."""
        from .noise import FlowSampling, noise_process

        scheme = cls.flow_weighting_scheme
        return noise_process(scheduler, FlowSampling(weighting_scheme=scheme) if scheme else None)

    # ------------------------------------------------------------------ classes
    @classmethod
    def pipeline_cls(cls):
        import diffusers

        return getattr(diffusers, cls.pipeline_class)

    @classmethod
    def denoiser_cls(cls):
        import diffusers

        return getattr(diffusers, cls.denoiser_class)

    @classmethod
    def denoiser(cls, pipe):
        """The pipeline's denoiser module (``pipe.unet`` or ``pipe.transformer``)."""
        return getattr(pipe, cls.denoiser_dir)

    @classmethod
    def set_denoiser(cls, pipe, module) -> None:
        setattr(pipe, cls.denoiser_dir, module)

    # ------------------------------------------------------------------ text conditioning
    @classmethod
    def encode_prompt(cls, pipe, prompts, negative_prompts, guidance: bool, device, max_sequence_length=None):
        """``(prompt_embeds, negative_prompt_embeds, pooled, negative_pooled)`` from the pipeline's own
        ``encode_prompt``; pooled entries are None for families without them. ``max_sequence_length``: T5
        tokens, for families with a T5 encoder (ignored by CLIP-only families)."""
        pe, npe = pipe.encode_prompt(prompts, device, 1, guidance, negative_prompt=negative_prompts)
        return pe, npe, None, None

    @classmethod
    def text_shapes(cls, pipe, max_sequence_length=None) -> tuple[list[int], int | None]:
        """``([L, D] of prompt_embeds, P of pooled or None)`` this pipeline's encoders give."""
        return [pipe.tokenizer.model_max_length, pipe.text_encoder.config.hidden_size], None

    @classmethod
    def prompt_tokens(cls, max_sequence_length: int | None = None) -> int:
        """Rows L of the stored ``prompt_embeds`` ``[L, D]`` without a pipeline at hand (``bench train --estimate``):
        CLIP's 77 tokens here (SD1.5, SDXL); a T5 family's own count (``max_sequence_length``, default the
        family's) as its :meth:`text_shapes` gives it."""
        return 77

    @classmethod
    def encoder_modules(cls, pipe) -> list:
        """The pipeline's loaded text encoders, in order (None-free)."""
        return [m for m in (getattr(pipe, n, None) for n in cls.text_encoders) if m is not None]

    # ------------------------------------------------------------------ the denoiser on a training batch
    @classmethod
    def conditioning(cls, batch: dict, k: int) -> dict:
        """The denoiser's keyword arguments for ``k`` stacked copies of ``batch``'s conditioning: the prompt
        embeddings, and the pooled ones under :attr:`pooled_kwarg` when the family declares one."""
        cond = {"encoder_hidden_states": batch["prompt_embeds"].repeat(k, 1, 1)}
        if cls.pooled_kwarg:
            cond[cls.pooled_kwarg] = batch["pooled_prompt_embeds"].repeat(k, 1)
        return cond

    @classmethod
    def predict(cls, model, x_t: "torch.Tensor", timestep: "torch.Tensor", cond: dict) -> "torch.Tensor":
        """The denoiser's prediction ``[N, C, h, w]`` for ``x_t`` ``[N, C, h, w]`` at ``timestep`` ``[N]``."""
        return model(x_t, timestep, **cond, return_dict=False)[0]

    # ------------------------------------------------------------------ saving
    @classmethod
    def save_lora(cls, layers: dict, output_dir: str, metadata: dict) -> None:
        """Write LoRA ``layers`` (diffusers-format state dict) as ``pipe.load_lora_weights(output_dir)`` reads."""
        cls.pipeline_cls().save_lora_weights(output_dir, unet_lora_layers=layers, safe_serialization=True,
                                             unet_lora_adapter_metadata=metadata)

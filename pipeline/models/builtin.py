"""Built-in models: one registry of the names ``--model`` takes besides a folder or a hub id.

Each :class:`BuiltinModel` knows its name, family, kind and how to produce it:

- ``tiny``: a tiny random SDXL / SD1.5 / SD3 / Flux pipeline, built offline once into the cache
  (:func:`materialise_tiny`);
- ``folder``: a committed diffusers folder, registered by a plugin: the miniature world's pretrained
  ``shapes-sdxl`` (``mapo_tools.models`` entry point, :data:`PLUGIN_GROUP`; no core module imports the world);
- ``arch``: a full-size architecture with random weights, built in memory on demand (``sdxl-arch``,
  ``sd35-medium-arch``, ``sd35-large-arch``, ``flux-dev-arch``).

Callers ask the registry (:func:`get_builtin`, :func:`builtin_names`) instead of branching on names.

The tiny models keep the real architectures' conditioning (SDXL: two text encoders,
pooled embedding and time ids; SD1.5: one encoder) at toy widths, so every code path that
real SDXL takes runs on a laptop CPU in seconds. They are saved in the diffusers folder
layout and loaded back through ``from_pretrained`` exactly like a downloaded model.

``sdxl-arch`` is SDXL base 1.0's architecture with random weights (about 2.6B UNet
parameters): the honest way to measure real-size speed and memory with no weights at hand.
It is built in memory on demand instead of being written to disk (about 14 GB in fp32).
``sd35-medium-arch`` and ``sd35-large-arch`` are the SD3.5 transformers (about 2.5B and 8.1B parameters) at
their published configs, with random weights, for the same use on the flow family
(:func:`sd35_arch_components`); ``flux-dev-arch`` is FLUX.1-dev's transformer (about 11.9B) likewise
(:func:`flux_dev_arch_components`).

The module is a little over 500 lines: each built-in's builder sits beside the registry entry that names it, so a
new family adds its tiny model here (as tiny-sd3 and tiny-flux did) rather than in a module of its own.
"""
from __future__ import annotations

import functools
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

BUILTIN_VERSION = "v1"  # bump when a built-in's config changes so caches are rebuilt

_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    steps_offset=1,
    timestep_spacing="leading",
    prediction_type="epsilon",
)


def cache_root() -> Path:
    """Where built-in models are materialised (override with MAPO_CACHE)."""
    base = os.environ.get("MAPO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mapo")
    return Path(base) / "models"


def _text_config(hidden: int, projection: int | None = None) -> dict:
    cfg = dict(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )
    if projection is not None:
        cfg["projection_dim"] = projection
    return cfg


def _tiny_unet(cross_attention_dim: int, sdxl: bool):
    from diffusers import UNet2DConditionModel

    extra = {}
    if sdxl:
        time_dim = 8
        extra = dict(
            addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            # 6 time ids, each embedded to time_dim, plus text encoder 2's pooled projection.
            projection_class_embeddings_input_dim=6 * time_dim + 32,
            transformer_layers_per_block=(1, 2),
            use_linear_projection=True,
        )
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=8,
        **extra,
    )


def _vae_config(widths: tuple, layers: int, groups: int, sample_size: int, scaling_factor: float,
                latent_channels: int = 4) -> dict:
    # Four blocks keep the real /8 downscale, so latents have the real shape ratio.
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=widths,
        layers_per_block=layers,
        latent_channels=latent_channels,
        norm_num_groups=groups,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
    )


def _tiny_vae(scaling_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**_vae_config((8, 16, 16, 16), 1, 8, 64, scaling_factor))


def _tiny_t5(d_model: int, d_kv: int, d_ff: int, num_layers: int):
    """A tiny T5 text encoder (``T5EncoderModel``) over the offline tokenizer's 1200-token vocabulary
    (:func:`pipeline.models.tokenizer.build_t5_tokenizer`): SD3's third and Flux's second text encoder."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=1200, d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=num_layers,
                                   num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                   decoder_start_token_id=0))


def _tiny_flow_vae(scaling_factor: float, shift_factor: float):
    """A tiny 16-channel VAE with a flow model's ``shift_factor`` and no quant convs (SD3, Flux)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**{**_vae_config((8, 16, 16, 16), 1, 8, 64, scaling_factor, latent_channels=16),
                            "shift_factor": shift_factor, "use_quant_conv": False, "use_post_quant_conv": False})


def _tiny_sd3(tok_dir: Path):
    """tiny-sd3: SD3's architecture at toy widths. An MMDiT (SD3Transformer2DModel, patch 2, 16 latent
    channels), CLIP-L and CLIP-G stand-ins (CLIPTextModelWithProjection, 32 wide, pooled 32 + 32 = the
    transformer's pooled_projection_dim 64), a tiny T5 (T5EncoderModel, d_model = joint_attention_dim 64) with
    an offline-trained tokenizer, a 16-channel VAE with SD3's shift_factor and scaling_factor, and SD3's
    FlowMatchEulerDiscreteScheduler (shift 3.0)."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from pipeline.models.tokenizer import build_clip_tokenizer, build_t5_tokenizer

    joint = 64
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=joint, caption_projection_dim=32, pooled_projection_dim=64,
        pos_embed_max_size=32,
    )
    t5 = _tiny_t5(joint, d_kv=16, d_ff=64, num_layers=2)
    vae = _tiny_flow_vae(1.5305, 0.0609)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=vae,
        text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(**_text_config(32, projection=32))),
        tokenizer=build_clip_tokenizer(tok_dir / "1"),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**_text_config(32, projection=32))),
        tokenizer_2=build_clip_tokenizer(tok_dir / "2", pad_token="!"),
        text_encoder_3=t5,
        tokenizer_3=build_t5_tokenizer(),
    )


# scheduler/scheduler_config.json of black-forest-labs/FLUX.1-dev: FlowMatchEulerDiscreteScheduler with dynamic
# shifting (mu from the image token count, between base_shift at 256 tokens and max_shift at 4096).
FLUX_DEV_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                          max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)


def _tiny_flux(tok_dir: Path):
    """tiny-flux: Flux.1-dev's architecture at toy widths. A FluxTransformer2DModel (one double and one single
    block, 4 heads of 8, rotary axes 2 + 2 + 4 = 8, in_channels 64 = 16 latent channels packed 2x2,
    ``guidance_embeds=True`` as dev), a CLIP-L stand-in (CLIPTextModel, 32 wide: its pooled output is the
    transformer's pooled_projection_dim 32), a tiny T5 (d_model = joint_attention_dim 32) with the offline-trained
    tokenizer, a 16-channel VAE with Flux's shift_factor and scaling_factor, and Flux.1-dev's scheduler config
    (:data:`FLUX_DEV_SCHEDULER`)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from pipeline.models.tokenizer import build_clip_tokenizer, build_t5_tokenizer

    joint = 32
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=joint, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    )
    t5 = _tiny_t5(joint, d_kv=8, d_ff=32, num_layers=1)
    vae = _tiny_flow_vae(0.3611, 0.1159)  # FLUX.1-dev's vae/config.json: scaling_factor, shift_factor
    return FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER),
        vae=vae,
        text_encoder=CLIPTextModel(CLIPTextConfig(**_text_config(32))),
        tokenizer=build_clip_tokenizer(tok_dir / "1"),
        text_encoder_2=t5,
        tokenizer_2=build_t5_tokenizer(),
    )


def _tiny_sdxl(tok_dir: Path):
    """tiny-sdxl: SDXL's conditioning (two CLIP text encoders 32 wide, pooled projection 32, time ids) at toy
    widths, with SDXL's VAE scaling factor and an EulerDiscreteScheduler of SDXL's schedule."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pipeline.models.tokenizer import build_clip_tokenizer

    scheduler = EulerDiscreteScheduler(**_SCHEDULER)
    te1 = CLIPTextModel(CLIPTextConfig(**_text_config(32)))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**_text_config(32, projection=32)))
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(0.13025),
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=build_clip_tokenizer(tok_dir / "1"),
        tokenizer_2=build_clip_tokenizer(tok_dir / "2", pad_token="!"),
        unet=_tiny_unet(64, sdxl=True),
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


def _tiny_sd15(tok_dir: Path):
    """tiny-sd15: SD1.5's one CLIP text encoder (32 wide), its VAE scaling factor, no safety checker."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    from pipeline.models.tokenizer import build_clip_tokenizer

    scheduler = EulerDiscreteScheduler(**_SCHEDULER)
    return StableDiffusionPipeline(
        vae=_tiny_vae(0.18215),
        text_encoder=CLIPTextModel(CLIPTextConfig(**_text_config(32))),
        tokenizer=build_clip_tokenizer(tok_dir / "1"),
        unet=_tiny_unet(32, sdxl=False),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny(name: str, directory: Path) -> None:
    """Create the tiny random pipeline ``name`` (a built-in of kind ``tiny``) and save it in the diffusers layout.

    Raises:
        ValueError: ``name`` is not a tiny built-in (a programming error: callers ask the registry first).
    """
    import torch

    entry = get_builtin(name)
    if entry is None or entry.kind != "tiny":
        raise ValueError(name)
    torch.manual_seed(0)  # the same random weights on every machine
    tok_dir = directory / "_tok"
    pipe = entry.build(tok_dir)
    pipe.save_pretrained(directory, safe_serialization=True)
    shutil.rmtree(tok_dir)


def materialise_tiny(name: str) -> Path:
    """Return the folder of built-in ``name``, building it once (atomically) if needed."""
    target = cache_root() / f"{name}-{BUILTIN_VERSION}"
    if (target / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    # One builder at a time (parallel test workers, the processes of a launch): the others wait, then use its folder.
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if (target / "model_index.json").exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            build_tiny(name, tmp)
            try:
                os.replace(tmp, target)
            except OSError:
                # Another process built it first (a file system where the lock does not hold): use theirs.
                if not (target / "model_index.json").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def sdxl_arch_components(dtype, device, skip: tuple[str, ...] = ()):
    """SDXL base 1.0's architecture with random weights, built directly on ``device``.

    Components named in ``skip`` are not built (None), e.g. the 2.6B UNet for text/VAE-only work.
    """
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pipeline.models.tokenizer import build_clip_tokenizer

    torch.manual_seed(0)
    unet_cfg = dict(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        use_linear_projection=True,
        norm_num_groups=32,
    )
    vae_cfg = {**_vae_config((128, 256, 512, 512), 2, 32, 1024, 0.13025), "force_upcast": True}
    te1_cfg = dict(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
    )
    te2_cfg = dict(
        vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
        num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
    )
    builders = dict(
        unet=lambda: UNet2DConditionModel(**unet_cfg),
        vae=lambda: AutoencoderKL(**vae_cfg),
        text_encoder=lambda: CLIPTextModel(CLIPTextConfig(**te1_cfg)),
        text_encoder_2=lambda: CLIPTextModelWithProjection(CLIPTextConfig(**te2_cfg)),
    )
    comps = {}
    with torch.device(device):
        for key, build in builders.items():
            # torch's Module.to: diffusers' ModelMixin.to logs an empty 'should be kept in float32' warning.
            comps[key] = None if key in skip else torch.nn.Module.to(build(), dtype=dtype)
    tok_dir = Path(tempfile.mkdtemp(prefix="sdxl-arch-tok-"))
    try:
        comps["tokenizer"] = build_clip_tokenizer(tok_dir / "1")
        comps["tokenizer_2"] = build_clip_tokenizer(tok_dir / "2", pad_token="!")
    finally:
        shutil.rmtree(tok_dir, ignore_errors=True)
    comps["scheduler"] = EulerDiscreteScheduler(**_SCHEDULER)
    return comps


# ``transformer/config.json`` of stabilityai/stable-diffusion-3.5-medium and -large (Hugging Face, gated; the
# values as diffusers' SD3Transformer2DModel reads them, as copied verbatim by several public loaders of those
# checkpoints that avoid the gated repos; docs/benchmarks.md "SD3.5"). Medium: MMDiT-X, whose first 13 blocks
# add a second, image-only attention (``dual_attention_layers``); large: 38 plain MMDiT blocks. Both: QK RMS-norm.
SD35_TRANSFORMER_CONFIGS = {
    "sd35-medium-arch": dict(
        sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
        num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
        pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
    ),
    "sd35-large-arch": dict(
        sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=38, attention_head_dim=64,
        num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432, pooled_projection_dim=2048,
        pos_embed_max_size=192, dual_attention_layers=(), qk_norm="rms_norm",
    ),
}
# scheduler/scheduler_config.json of both SD3.5 releases: FlowMatchEulerDiscreteScheduler, shift 3.0.
SD35_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)


def sd35_arch_components(model: str, dtype, device, skip: tuple[str, ...] = ()):
    """An SD3.5 transformer (``model``: a key of :data:`SD35_TRANSFORMER_CONFIGS`) with random weights, built on
    ``device`` in ``dtype``, and its FlowMatchEulerDiscreteScheduler: ``{"transformer", "scheduler"}``.

    The text encoders (CLIP-L, CLIP-G, T5-XXL) and the VAE are not built: a training step on precomputed
    latents and embeddings (``mapo-data precompute``'s shards: what ``bench --estimate`` measures) never runs
    them, and T5-XXL alone is 4.8B weights. ``skip`` containing "transformer" leaves it out (None).
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    torch.manual_seed(0)
    comps = {"transformer": None}
    if "transformer" not in skip:
        with torch.device(device):
            comps["transformer"] = torch.nn.Module.to(
                SD3Transformer2DModel(**SD35_TRANSFORMER_CONFIGS[model]), dtype=dtype)
    comps["scheduler"] = FlowMatchEulerDiscreteScheduler(**SD35_SCHEDULER)
    return comps


# ``transformer/config.json`` of black-forest-labs/FLUX.1-dev (gated; its values are FluxTransformer2DModel's class
# defaults, which diffusers took from Flux.1, plus ``guidance_embeds``: dev is guidance-distilled): 19 double-stream
# and 38 single-stream blocks, 24 heads of 128, rotary axes 16 + 56 + 56 = 128; about 11.9B parameters.
FLUX_DEV_TRANSFORMER_CONFIG = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)


def flux_dev_arch_components(dtype, device, skip: tuple[str, ...] = ()):
    """FLUX.1-dev's transformer (:data:`FLUX_DEV_TRANSFORMER_CONFIG`) with random weights, built on ``device`` in
    ``dtype``, and its scheduler (:data:`FLUX_DEV_SCHEDULER`): ``{"transformer", "scheduler"}``.

    As :func:`sd35_arch_components`, the text encoders (CLIP-L, T5-XXL) and the VAE are not built: a training step on
    precomputed latents and embeddings never runs them. ``skip`` containing "transformer" leaves it out (None).
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    torch.manual_seed(0)
    comps = {"transformer": None}
    if "transformer" not in skip:
        with torch.device(device):
            comps["transformer"] = torch.nn.Module.to(FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER_CONFIG),
                                                      dtype=dtype)
    comps["scheduler"] = FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER)
    return comps


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------

KINDS = ("tiny", "folder", "arch")  # also the order names are listed in
PLUGIN_GROUP = "mapo_tools.models"  # entry-point group of model plugins (value: a module that registers models)
DEFAULT_EXAMPLE_PROMPT = "a cat on a sofa"


@dataclass(frozen=True)
class BuiltinModel:
    """One built-in model's declaration.

    - ``name``: what users pass as ``--model``; ``family``: its :mod:`pipeline.families` name ("sd15", "sdxl",
      "sd3"); ``kind``: one of :data:`KINDS`.
    - ``build(tok_dir) -> DiffusionPipeline`` (kind ``tiny``): the random pipeline, built after
      ``torch.manual_seed(0)``; ``tok_dir`` is a scratch folder for its tokenizers. Saved once into the cache.
    - ``path() -> Path`` (kind ``folder``): the committed folder, verified (raises UserError when it is not whole).
    - ``components(dtype, device, skip) -> dict`` (kind ``arch``): the components built in memory with random
      weights; the denoiser under ``"unet"`` or ``"transformer"`` as its family names it.
    - ``whole_pipeline`` (kind ``arch``): the components make the family's whole pipeline (text encoders, VAE),
      so generation runs; False for a denoiser alone (training on precomputed latents, ``bench --estimate``).
    - ``resolution``: the image side it was made for when its folder does not say (px): an ``arch`` model, or a
      family whose denoiser config has no ``sample_size`` (Flux).
    - ``example_prompt``: a prompt it understands (the model card's snippet).
    """

    name: str
    family: str
    kind: str
    build: Callable[[Path], Any] | None = None
    path: Callable[[], Path] | None = None
    components: Callable[..., dict] | None = None
    whole_pipeline: bool = True
    resolution: int | None = None
    example_prompt: str = DEFAULT_EXAMPLE_PROMPT

    def __post_init__(self):
        producer = {"tiny": self.build, "folder": self.path, "arch": self.components}.get(self.kind)
        if producer is None:
            raise ValueError(f"built-in model '{self.name}': kind {self.kind!r} needs its producer "
                             "(tiny: build, folder: path, arch: components)")

    @property
    def has_folder(self) -> bool:
        """Whether there is a diffusers folder to load (tiny and folder kinds); arch models are built in memory."""
        return self.kind != "arch"

    def folder(self) -> Path:
        """The model's diffusers folder: built once into the cache (``tiny``) or the verified committed folder.

        Raises:
            UserError: a committed folder is not whole. ValueError: an ``arch`` model (no folder; check
                :attr:`has_folder` first).
        """
        if self.kind == "tiny":
            return materialise_tiny(self.name)
        if self.kind == "folder":
            return self.path()
        raise ValueError(f"built-in '{self.name}' has no folder: it is built in memory")


_MODELS: dict[str, BuiltinModel] = {}
_loaded = False


def register_model(entry: BuiltinModel) -> BuiltinModel:
    """Add ``entry`` to the registry (called once per model, by this module or at a plugin module's import).

    Raises:
        ValueError: another model of that name is registered (a programming error).
    """
    old = _MODELS.get(entry.name)
    if old is not None and old != entry:
        raise ValueError(f"built-in model '{entry.name}' is registered twice")
    _MODELS[entry.name] = entry
    return entry


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from pipeline.plugins import import_plugins

    import_plugins(PLUGIN_GROUP)


def builtin_models() -> dict[str, BuiltinModel]:
    """Every built-in by name: tiny, then folder, then arch models, each kind in registration order."""
    _load_all()
    return {e.name: e for kind in KINDS for e in _MODELS.values() if e.kind == kind}


def builtin_names(whole_pipeline: bool = False) -> tuple[str, ...]:
    """The built-in names, in :func:`builtin_models` order (``tiny-sdxl, ..., shapes-sdxl, sdxl-arch, ...``);
    ``whole_pipeline``: only those that load as a whole pipeline (not ``sd35-medium-arch``, a transformer alone)."""
    return tuple(name for name, e in builtin_models().items() if e.whole_pipeline or not whole_pipeline)


def get_builtin(name: str) -> BuiltinModel | None:
    """The built-in ``name``, or None when it is not one (a folder, a hub id, a typo)."""
    if name not in _MODELS:
        _load_all()
    return _MODELS.get(name)


for _entry in (
    BuiltinModel("tiny-sdxl", family="sdxl", kind="tiny", build=_tiny_sdxl),
    BuiltinModel("tiny-sd15", family="sd15", kind="tiny", build=_tiny_sd15),
    BuiltinModel("tiny-sd3", family="sd3", kind="tiny", build=_tiny_sd3),
    # resolution: FluxPipeline defaults to 1024 px whatever the model (no sample_size in Flux's config).
    BuiltinModel("tiny-flux", family="flux", kind="tiny", build=_tiny_flux, resolution=64),
    BuiltinModel("sdxl-arch", family="sdxl", kind="arch", components=sdxl_arch_components, resolution=1024),
    *(BuiltinModel(name, family="sd3", kind="arch", resolution=1024, whole_pipeline=False,
                   components=functools.partial(sd35_arch_components, name))
      for name in SD35_TRANSFORMER_CONFIGS),
    BuiltinModel("flux-dev-arch", family="flux", kind="arch", resolution=1024, whole_pipeline=False,
                 components=flux_dev_arch_components),
):
    register_model(_entry)

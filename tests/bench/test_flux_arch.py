"""Flux.1-dev in `python -m bench train --estimate`: flux-dev-arch resolves as the flux family at FLUX.1-dev's
published size and scheduler, the data it is benched on has Flux's precompute shapes (asked of the family, not of
the model's name), and the Flux step's estimate agrees with a real CPU step on tiny-flux."""
from __future__ import annotations

import pytest

# Black Forest Labs' FLUX.1-dev model card: "a 12 billion parameter rectified flow transformer"; the transformer
# at its published config has 11,901,408,320 values (no buffers: the rotary tables are computed in the forward).
PUBLISHED_PARAMETERS = 11.9e9


def test_flux_dev_arch_resolves_as_flux_with_the_published_size_and_scheduler():
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    from bench.fake import fake_mode, real_flow_schedulers
    from pipeline.families import family_of_denoiser, get_family
    from pipeline.models.loading import check_model_available, default_resolution, model_family_of, unet_config
    from train.model_setup import load_base_unet_and_scheduler

    flux = get_family("flux")
    assert model_family_of("flux-dev-arch") is flux and check_model_available("flux-dev-arch") == "flux"
    assert default_resolution("flux-dev-arch") == 1024 and unet_config("flux-dev-arch") is None
    with fake_mode(), real_flow_schedulers():  # shapes only: no 48 GB of random fp32 weights
        transformer, scheduler = load_base_unet_and_scheduler("flux-dev-arch", weights=False)
    assert family_of_denoiser(transformer) is flux
    c = transformer.config
    assert (c.num_layers, c.num_single_layers, c.num_attention_heads, c.attention_head_dim) == (19, 38, 24, 128)
    assert c.in_channels == 64 and c.joint_attention_dim == 4096 and c.pooled_projection_dim == 768
    assert c.guidance_embeds and tuple(c.axes_dims_rope) == (16, 56, 56)
    assert next(transformer.parameters()).dtype == torch.float32
    n = sum(t.numel() for t in (*transformer.parameters(), *transformer.buffers()))
    assert n == pytest.approx(PUBLISHED_PARAMETERS, rel=0.01)
    assert isinstance(scheduler, FlowMatchEulerDiscreteScheduler)
    s = scheduler.config
    assert (s.shift, s.use_dynamic_shifting, s.base_shift, s.max_shift) == (3.0, True, 0.5, 1.15)
    assert (s.base_image_seq_len, s.max_image_seq_len) == (256, 4096)


def test_flux_dev_arch_refuses_a_whole_pipeline_in_one_line():
    from pipeline.errors import UserError
    from pipeline.models.loading import load_pipeline

    with pytest.raises(UserError, match="no text encoders or VAE"):
        load_pipeline("flux-dev-arch", device="cpu")


def test_bench_data_for_flux_dev_arch_has_flux_precompute_shapes():
    """The GPU bench's random data and the estimate's fake items: latents unpacked [2, 16, R/8, R/8] (in_channels 64
    is the 2x2-packed width), prompt_embeds [512, 4096] (T5 at FluxPipeline's default 512 tokens, no CLIP
    sequence), pooled [768] (CLIP-L's pooled output), no SDXL time ids."""
    import torch

    from bench.config import BenchConfig
    from bench.data import make_precomputed, precomputed_items
    from bench.estimate import _fake_items
    from pipeline.models.builtin import FLUX_DEV_TRANSFORMER_CONFIG

    data = make_precomputed("flux-dev-arch", torch.device("cpu"), torch.bfloat16, 2, 1024, 0)
    assert tuple(data["latents"].shape) == (2, 2, 16, 128, 128) and data["latents"].dtype == torch.float16
    assert tuple(data["prompt_embeds"].shape) == (2, 512, 4096)
    assert tuple(data["pooled_prompt_embeds"].shape) == (2, 768)
    assert len(precomputed_items(data)) == 2
    config = {"_class_name": "FluxTransformer2DModel", **FLUX_DEV_TRANSFORMER_CONFIG}
    item = _fake_items(config, 1, 1024)[0]
    assert tuple(item["latents"].shape) == (2, 16, 128, 128)
    assert tuple(item["prompt_embeds"].shape) == (512, 4096)
    assert tuple(item["pooled_prompt_embeds"].shape) == (768,) and "add_time_ids" not in item
    cfg = BenchConfig(model="flux-dev-arch", estimate=True).resolved()
    assert (cfg.resolution, cfg.dtype, cfg.batch_size, cfg.gradient_checkpointing) == (1024, "bf16", 1, True)


# As test_sd3_arch does for tiny-sd3: the fake-tensor count against the same count on real tensors, here through
# Flux's packed, guidance-embedding step.
def test_fake_peak_matches_a_real_cpu_step_on_tiny_flux():
    from bench.config import BenchConfig
    from bench.estimate import estimate_step

    cfg = BenchConfig(model="tiny-flux", resolution=64, dtype="bf16", gradient_checkpointing=True,
                      configurations=["mapo"]).resolved()
    real = estimate_step(cfg, "mapo", 1, fake=False, count_flops=False)
    fake = estimate_step(cfg, "mapo", 1, count_flops=False)
    assert fake.peak_bytes == pytest.approx(real.peak_bytes, rel=0.02)
    assert fake.trainable_parameters == real.trainable_parameters > 0

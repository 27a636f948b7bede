"""The Flux family behind the seam: tiny-flux is recognised and loads through from_pretrained, its text is encoded
as FluxPipeline.encode_prompt encodes it, its latents pack and unpack as FluxPipeline's, and its training call is
the transformer call of FluxPipeline's denoising loop."""
from __future__ import annotations

import pytest
import torch

from pipeline.families import FAMILIES, Flux, family_from_index, family_of_denoiser, family_of_pipe
from pipeline.families.flux import TRAINING_GUIDANCE
from pipeline.families.noise import RectifiedFlow, noise_process


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread):
    """One torch thread (tests/conftest.py)."""


@pytest.fixture(scope="module")
def pipe():
    from pipeline.models.loading import load_pipeline

    return load_pipeline("tiny-flux", device="cpu")


def test_tiny_flux_is_recognised_and_loads_with_from_pretrained(pipe):
    """tiny-flux is Flux.1-dev's layout: FluxTransformer2DModel (64 = 16 x 4 packed channels, guidance embedded),
    CLIP-L (CLIPTextModel) + T5, a 16-channel VAE with shift and scale, the dynamic-shifting scheduler."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from pipeline.models.loading import (
        _model_index,
        check_model_available,
        default_resolution,
        model_family_of,
        resolve_model_source,
    )

    assert family_from_index(_model_index("tiny-flux")[1]) is Flux
    assert model_family_of("tiny-flux") is Flux and check_model_available("tiny-flux") == "flux"
    assert isinstance(pipe, FluxPipeline) and family_of_pipe(pipe) is Flux
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel"
    assert type(pipe.text_encoder_2).__name__ == "T5EncoderModel"
    assert pipe.vae.config.latent_channels == 16 and pipe.vae.config.shift_factor == pytest.approx(0.1159)
    sched = pipe.scheduler.config
    assert sched.use_dynamic_shifting and (sched.base_shift, sched.max_shift) == (0.5, 1.15)
    t = FluxTransformer2DModel.from_pretrained(resolve_model_source("tiny-flux"), subfolder="transformer")
    assert family_of_denoiser(t) is Flux and t.config.guidance_embeds and Flux.latent_channels(t.config) == 16
    assert family_of_denoiser(dict(t.config)) is Flux
    assert default_resolution("tiny-flux") == 64 and Flux.default_sample_size(t.config) == 128  # FluxPipeline's
    # Only Flux answers for Flux, and Flux for no other built-in.
    assert [f for f in FAMILIES if f.matches_denoiser(t.config)] == [Flux]
    for other in ("tiny-sd3", "tiny-sdxl", "tiny-sd15"):
        assert not Flux.matches_index(_model_index(other)[1]), other


def test_encode_text_is_flux_encode_prompt(pipe):
    """T5's prompt_embeds [B, L, D] and CLIP-L's pooled [B, P], as FluxPipeline.encode_prompt; no negatives
    even when guidance is asked for (Flux.1-dev's guidance is the transformer's input)."""
    from pipeline.models.conditioning import encode_text

    emb = encode_text(pipe, ["a red circle", "a blue square"], ["blurry", None], guidance=True, max_sequence_length=16)
    with torch.no_grad():
        pe, pooled, _ = pipe.encode_prompt(["a red circle", "a blue square"], None, device="cpu",
                                           max_sequence_length=16)
    torch.testing.assert_close(emb.prompt_embeds, pe)
    torch.testing.assert_close(emb.pooled, pooled)
    assert emb.negative_prompt_embeds is None and emb.negative_pooled is None
    assert Flux.text_shapes(pipe, 16) == ([16, 32], 32) and list(pe.shape[1:]) == [16, 32]
    default = encode_text(pipe, ["a red circle"])  # the pipeline's default 512 T5 tokens
    assert default.prompt_embeds.shape == (1, 512, 32) and Flux.max_sequence_length == 512
    assert Flux.optional_t5 is None and not Flux.cfg_negative_prompt


def test_pack_unpack_round_trip_is_flux_pipelines():
    from diffusers import FluxPipeline

    x = torch.randn(3, 16, 8, 6)
    packed = Flux.pack(x)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(x, 3, 16, 8, 6))
    assert packed.shape == (3, 4 * 3, 64)
    torch.testing.assert_close(Flux.unpack(packed, 8, 6), x)
    torch.testing.assert_close(FluxPipeline._unpack_latents(packed, 8 * 8, 6 * 8, 8), x)


def test_predict_is_the_pipelines_transformer_call(pipe):
    """The family's training call = FluxPipeline's denoising-loop call on the packed latents: the same image and
    text ids, guidance TRAINING_GUIDANCE, timestep / 1000; unpacked back to [N, 16, h, w] (h != w: a swapped side
    would not show on a square latent)."""
    n, h, w = 2, 8, 4
    gen = torch.Generator().manual_seed(0)
    x_t = torch.randn(n, 16, h, w, generator=gen)
    sigma = torch.tensor([0.3, 0.8])
    pe, pooled = torch.randn(n, 8, 32, generator=gen), torch.randn(n, 32, generator=gen)
    t = noise_process(pipe.scheduler).model_timestep(sigma)  # sigma * 1000, what the trainer passes
    with torch.no_grad():
        ours = Flux.predict(pipe.transformer, x_t, t, Flux.conditioning(
            {"prompt_embeds": pe, "pooled_prompt_embeds": pooled}, 1))
        theirs = pipe.transformer(
            hidden_states=FluxPipeline_pack(x_t), timestep=t / 1000,
            guidance=torch.full([1], TRAINING_GUIDANCE, dtype=torch.float32).expand(n), pooled_projections=pooled,
            encoder_hidden_states=pe, txt_ids=torch.zeros(8, 3),
            img_ids=pipe._prepare_latent_image_ids(n, h // 2, w // 2, "cpu", torch.float32), return_dict=False)[0]
        other_guidance = pipe.transformer(
            hidden_states=FluxPipeline_pack(x_t), timestep=t / 1000, guidance=torch.full([n], 1.0),
            pooled_projections=pooled, encoder_hidden_states=pe, txt_ids=torch.zeros(8, 3),
            img_ids=pipe._prepare_latent_image_ids(n, h // 2, w // 2, "cpu", torch.float32), return_dict=False)[0]
    assert ours.shape == x_t.shape
    torch.testing.assert_close(ours, pipe._unpack_latents(theirs, h * 8, w * 8, 8))
    assert not torch.allclose(theirs, other_guidance)  # the guidance input matters: 3.5 is what is passed


def test_predict_passes_no_guidance_to_an_undistilled_transformer(pipe):
    """A transformer without guidance embedding (Flux.1-schnell: ``guidance_embeds=False``) is called with
    guidance None, as diffusers' Flux training script and FluxPipeline call it (its time embedding takes none)."""
    config = {**pipe.transformer.config, "guidance_embeds": False}
    schnell = type(pipe.transformer).from_config(config)
    n, h, w = 2, 4, 6
    gen = torch.Generator().manual_seed(2)
    x_t = torch.randn(n, 16, h, w, generator=gen)
    pe, pooled = torch.randn(n, 8, 32, generator=gen), torch.randn(n, 32, generator=gen)
    t = torch.tensor([300.0, 800.0])
    with torch.no_grad():
        ours = Flux.predict(schnell, x_t, t, {"encoder_hidden_states": pe, "pooled_projections": pooled})
        theirs = schnell(hidden_states=FluxPipeline_pack(x_t), timestep=t / 1000, guidance=None,
                         pooled_projections=pooled, encoder_hidden_states=pe, txt_ids=torch.zeros(8, 3),
                         img_ids=pipe._prepare_latent_image_ids(n, h // 2, w // 2, "cpu", torch.float32),
                         return_dict=False)[0]
    torch.testing.assert_close(ours, pipe._unpack_latents(theirs, h * 8, w * 8, 8))


def FluxPipeline_pack(x):  # noqa: N802 - named after what it calls
    from diffusers import FluxPipeline

    return FluxPipeline._pack_latents(x, *x.shape)


def test_flux_noise_process_is_unshifted_uniform_rectified_flow(pipe):
    """Flux.1-dev's scheduler shifts dynamically at sampling only: its training sigmas are unshifted
    (sigma_i = 1 - i / T), drawn uniformly as diffusers' Flux training script draws them by default
    (weighting_scheme "none"); SD3 keeps logit-normal. The trainer's step asks the family."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from pipeline.families import SD3

    proc = Flux.noise_process(pipe.scheduler)
    assert isinstance(proc, RectifiedFlow) and proc.sampling.weighting_scheme == "none"
    u = 1 - torch.tensor([0.0, 500.0, 999.0]) / 1000
    torch.testing.assert_close(proc.sigmas[[0, 500, 999]], u)
    many = proc.draw((20000, 1, 1, 1), torch.Generator().manual_seed(0))[1]
    assert many.median().item() == pytest.approx(0.5, abs=0.02)
    assert (many < 0.1).float().mean().item() == pytest.approx(0.1, abs=0.01)  # logit-normal: 0.014
    sd3 = SD3.noise_process(FlowMatchEulerDiscreteScheduler(shift=3.0))
    assert sd3.sampling.weighting_scheme == "logit_normal"


def test_training_step_draws_with_the_family_sampling(pipe, monkeypatch):
    """train.step.compute_loss on a Flux transformer draws its sigmas with Flux's process."""
    import train.step
    from train.step import Objective

    seen = []
    real = train.step.draw_noise

    def spy(latents, process, generator, per_example=False):
        seen.append(process.sampling.weighting_scheme)
        return real(latents, process, generator, per_example=per_example)

    monkeypatch.setattr(train.step, "draw_noise", spy)
    batch = {"latents": torch.randn(1, 2, 16, 4, 4), "prompt_embeds": torch.randn(1, 8, 32),
             "pooled_prompt_embeds": torch.randn(1, 32)}
    with torch.no_grad():
        out = train.step.compute_loss(pipe.transformer, batch, pipe.scheduler, Objective("sft", None, 1000, "flow"),
                                      torch.Generator().manual_seed(0))
    assert seen == ["none"] and torch.isfinite(out.loss)


def test_batch_invariant_sampling_keeps_flux_ids_whole(pipe):
    """Batch-invariant sampling runs the transformer one image at a time but passes the position ids whole, even
    when their length equals the batch size (8 T5 tokens, 8 images): the images equal one-by-one sampling."""
    from pipeline.runtime.batch_invariance import per_sample_forward

    transformer = type(pipe.transformer).from_config(pipe.transformer.config)
    transformer.load_state_dict(pipe.transformer.state_dict())
    per_sample_forward(transformer, Flux.unbatched_inputs)
    n = 8
    x = torch.randn(n, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    cond = {"encoder_hidden_states": torch.randn(n, 8, 32), "pooled_projections": torch.randn(n, 32)}
    with torch.no_grad():
        whole = Flux.predict(transformer, x, torch.full((n,), 500.0), cond)
        one = Flux.predict(pipe.transformer, x[:1], torch.full((1,), 500.0), {k: v[:1] for k, v in cond.items()})
    torch.testing.assert_close(whole[:1], one)


def test_generate_samples_as_flux_pipeline_does(pipe):
    """stages.generate.generate_images on Flux (its per-seed initial noise packed 2x2, the distilled guidance as
    guidance_scale, no negative embeddings) gives FluxPipeline's own images for the same seeds."""
    from types import SimpleNamespace

    import numpy as np

    from stages.generate import generate_images
    from stages.recipes import ImageRequest

    cfg = SimpleNamespace(guidance_scale=3.5, num_inference_steps=2, resolution=64)
    requests = [ImageRequest("a red circle", None, 0), ImageRequest("a blue square", None, 1)]
    for request, seed in zip(requests, [11, 12]):  # one at a time: a batch of 2 changes kernels' last bits
        image = generate_images(pipe, [request], [seed], cfg, max_sequence_length=8)[0]
        theirs = pipe(request.prompt, num_inference_steps=2, guidance_scale=3.5, height=64, width=64,
                      max_sequence_length=8, generator=torch.Generator().manual_seed(seed)).images[0]
        np.testing.assert_array_equal(np.asarray(image), np.asarray(theirs))



def test_bench_estimate_items_are_flux_shaped(pipe):
    """``bench train --estimate``'s stand-in batch for a Flux transformer is what precompute stores for Flux:
    latents [2, 16, h, w] (not the transformer's 64 packed channels, which failed in its first linear) and T5's
    [512, D] prompt_embeds (no CLIP rows, unlike SD3's 77 + 256)."""
    from bench.estimate import _fake_items
    from pipeline.families import SD3

    item = _fake_items(dict(pipe.transformer.config), 1, 64)[0]
    assert tuple(item["latents"].shape) == (2, 16, 8, 8)
    assert tuple(item["prompt_embeds"].shape) == (Flux.max_sequence_length, 32)
    assert tuple(item["pooled_prompt_embeds"].shape) == (32,) and "add_time_ids" not in item
    assert Flux.prompt_tokens() == 512 and Flux.prompt_tokens(8) == 8
    assert SD3.prompt_tokens() == 77 + 256 and SD3.prompt_tokens(8) == 77 + 8

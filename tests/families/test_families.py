"""The model-family seam: each built-in is recognised, loaded through from_pretrained and encoded as its
diffusers pipeline encodes; the noise processes' inputs and targets worked out by hand."""
from __future__ import annotations

import pytest
import torch

from pipeline.families import SD3, SD15, SDXL, family_from_index, family_of_denoiser, family_of_pipe, get_family
from pipeline.families.noise import DdpmProcess, FlowSampling, RectifiedFlow, noise_process


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread):
    """One torch thread (tests/conftest.py)."""


@pytest.mark.parametrize("model, family", [("tiny-sdxl", SDXL), ("tiny-sd15", SD15), ("tiny-sd3", SD3)])
def test_family_read_from_model_index(model, family):
    from pipeline.models.loading import _model_index, check_model_available, model_family_of

    assert family_from_index(_model_index(model)[1]) is family
    assert model_family_of(model) is family and check_model_available(model) == family.name


def test_unknown_pipeline_class_is_one_line():
    from pipeline.errors import UserError

    flux_transformer = ["diffusers", "FluxTransformer2DModel"]
    assert family_from_index({"_class_name": "FluxPipeline", "transformer": flux_transformer}).name == "flux"
    # FLUX.1 Fill's transformer takes 384 input channels (latents + mask + masked image): not FluxPipeline's 64
    with pytest.raises(UserError, match="FluxFillPipeline pipeline, which mapo-tools does not support"):
        family_from_index({"_class_name": "FluxFillPipeline", "transformer": flux_transformer})
    with pytest.raises(UserError, match="PixArtAlphaPipeline pipeline, which mapo-tools does not support"):
        family_from_index({"_class_name": "PixArtAlphaPipeline",
                           "transformer": ["diffusers", "PixArtTransformer2DModel"]})
    with pytest.raises(UserError, match="unknown model family 'sd4'"):
        get_family("sd4")


def test_tiny_sd3_loads_with_from_pretrained():
    """tiny-sd3 is SD3's layout: an MMDiT, CLIP-L + CLIP-G with projections, a T5, a 16-channel VAE with
    shift and scale, the flow-matching scheduler; its T5 tokenizer is a real one (check_tokenizer passes)."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    from pipeline.models.loading import load_pipeline, resolve_model_source

    pipe = load_pipeline("tiny-sd3", device="cpu")
    assert isinstance(pipe, StableDiffusion3Pipeline) and family_of_pipe(pipe) is SD3
    assert type(pipe.text_encoder).__name__ == type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert type(pipe.text_encoder_3).__name__ == "T5EncoderModel" and len(pipe.tokenizer_3) >= 1000
    assert pipe.vae.config.latent_channels == 16 and pipe.vae.config.shift_factor == pytest.approx(0.0609)
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and pipe.scheduler.config.shift == 3.0
    # the plain diffusers call a user makes
    t = SD3Transformer2DModel.from_pretrained(resolve_model_source("tiny-sd3"), subfolder="transformer")
    assert family_of_denoiser(t) is SD3 and SD3.size_multiple == 16


@pytest.mark.parametrize("model", ["tiny-sd3", "tiny-sdxl", "tiny-sd15"])
def test_encode_text_is_the_pipelines_encode_prompt(model):
    """encode_text (the family's encoding) gives what the pipeline's own encode_prompt gives, prompt by prompt,
    negatives included."""
    from pipeline.models.conditioning import encode_text
    from pipeline.models.loading import load_pipeline

    pipe = load_pipeline(model, device="cpu")
    fam = family_of_pipe(pipe)
    emb = encode_text(pipe, ["a red circle"], ["blurry"], guidance=True)
    with torch.no_grad():
        if fam is SD3:
            pe, npe, pooled, npooled = pipe.encode_prompt("a red circle", None, None, device="cpu",
                                                          negative_prompt="blurry")
        elif fam is SDXL:
            pe, npe, pooled, npooled = pipe.encode_prompt("a red circle", device="cpu", negative_prompt="blurry")
        else:
            (pe, npe), pooled, npooled = pipe.encode_prompt("a red circle", "cpu", 1, True, "blurry"), None, None
    torch.testing.assert_close(emb.prompt_embeds, pe)
    torch.testing.assert_close(emb.negative_prompt_embeds, npe)
    if pooled is not None:
        torch.testing.assert_close(emb.pooled, pooled)
        torch.testing.assert_close(emb.negative_pooled, npooled)
    shape, pooled_dim = fam.text_shapes(pipe)
    assert list(emb.prompt_embeds.shape[1:]) == shape and (pooled_dim is None or emb.pooled.shape[1] == pooled_dim)


def test_sd3_without_t5_and_shorter_t5_sequence():
    """text_encoder_3=None, as diffusers allows: zeros where T5's tokens go; --max-sequence-length sets L."""
    from pipeline.models.conditioning import encode_text
    from pipeline.models.loading import load_pipeline

    pipe = load_pipeline("tiny-sd3", device="cpu", skip=("transformer", "text_encoder_3", "tokenizer_3"))
    emb = encode_text(pipe, ["a red circle"], max_sequence_length=32)
    assert emb.prompt_embeds.shape == (1, 77 + 32, 64)
    assert emb.prompt_embeds[:, 77:].abs().max() == 0 and emb.prompt_embeds[:, :77].abs().max() > 0


def test_ddpm_process_draws_as_before():
    """Timesteps first, then noise, from the step's generator: the draws the trainer made before the seam."""
    from diffusers import DDPMScheduler

    proc = noise_process(DDPMScheduler(num_train_timesteps=1000))
    assert isinstance(proc, DdpmProcess)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    noise, t = proc.draw((2, 4, 8, 8), g1)
    torch.testing.assert_close(t, torch.randint(0, 1000, (2,), generator=g2))
    torch.testing.assert_close(noise, torch.randn((2, 4, 8, 8), generator=g2))


def test_rectified_flow_by_hand():
    """x_t = (1 - s) x0 + s eps, target eps - x0, timestep s * 1000; sigmas are the scheduler's shifted ones:
    with shift 3, index i of T has sigma 3u / (1 + 2u), u = 1 - i / T (diffusers' FlowMatchEulerDiscreteScheduler)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    proc = noise_process(FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0))
    assert isinstance(proc, RectifiedFlow)
    x0 = torch.tensor([[[[1.0, -2.0]]]])
    eps = torch.tensor([[[[0.5, 0.5]]]])
    x_t, target = proc.noisy(x0, eps, torch.tensor([0.25]))
    torch.testing.assert_close(x_t, torch.tensor([[[[0.875, -1.375]]]]))
    torch.testing.assert_close(target, torch.tensor([[[[-0.5, 2.5]]]]))
    torch.testing.assert_close(proc.model_timestep(torch.tensor([0.25])), torch.tensor([250.0]))
    u = 1 - torch.tensor([0.0, 500.0, 999.0]) / 1000
    torch.testing.assert_close(proc.sigmas[[0, 500, 999]], 3 * u / (1 + 2 * u))


def test_rectified_flow_sigma_sampling_is_logit_normal_through_the_shift():
    """u = sigmoid(N(0, 1)) (diffusers' compute_density_for_timestep_sampling), sigma = sigmas[floor(u T)]; the
    same generator state gives the same draw (resume); 'none' is uniform."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    proc = RectifiedFlow(sched)
    noise, sigma = proc.draw((4, 16, 2, 2), torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    u = torch.sigmoid(torch.normal(0.0, 1.0, (4,), generator=g))
    torch.testing.assert_close(sigma, proc.sigmas[(u * 1000).long()])
    torch.testing.assert_close(noise, torch.randn((4, 16, 2, 2), generator=g))
    many = RectifiedFlow(sched).draw((20000, 1, 1, 1), torch.Generator().manual_seed(0))[1]
    # shift 3 pushes the logit-normal's median sigma 0.5 to 3 * 0.5 / (1 + 2 * 0.5) = 0.75
    assert many.median().item() == pytest.approx(0.75, abs=0.02)
    uniform = RectifiedFlow(sched, FlowSampling(weighting_scheme="none")).draw((20000, 1, 1, 1),
                                                                               torch.Generator().manual_seed(0))[1]
    assert uniform.median().item() == pytest.approx(0.75, abs=0.02) and uniform.min() < 0.05


def test_t5_options_follow_what_the_family_declares(monkeypatch):
    """``--max-sequence-length`` needs a T5 whose token count is a choice, ``--no-t5`` one that can be left out:
    SD3 takes both; SDXL neither; a family whose T5 is required (as Flux's ``text_encoder_2``) takes only the
    first, refused for the second by its own declaration, not by a family name."""
    from pipeline.errors import UserError
    from pipeline.models import loading

    loading.check_t5_options("tiny-sd3", ["--max-sequence-length", "--no-t5"])
    with pytest.raises(UserError, match="--max-sequence-length and --no-t5 apply only to models with a T5 text "
                                        "encoder \\(sd3\\); 'tiny-sdxl' is sdxl, which has none"):
        loading.check_t5_options("tiny-sdxl", ["--max-sequence-length", "--no-t5"])

    class RequiredT5(SD3):
        name, optional_t5, max_sequence_length = "required-t5", None, 512

    monkeypatch.setattr(loading, "model_family_of", lambda model: RequiredT5)
    loading.check_t5_options("some-model", ["--max-sequence-length"])
    with pytest.raises(UserError, match="--no-t5 applies only to models with a T5 text encoder \\(sd3\\); "
                                        "'some-model' is required-t5, whose T5 cannot be left out"):
        loading.check_t5_options("some-model", ["--max-sequence-length", "--no-t5"])
    assert RequiredT5.optional_t5 is None and SD3.optional_t5 == ("text_encoder_3", "tokenizer_3")
    assert SDXL.max_sequence_length is None and SDXL.optional_t5 is None


def test_family_of_pipe_asks_each_family_in_registry_order():
    """family_of_pipe asks each registered family (FAMILIES order), so a new family answers for its own
    pipelines in its module; components skipped at load (None) still tell the family; a pipeline no family
    knows is refused, not taken for SD1.5."""
    from types import SimpleNamespace

    assert family_of_pipe(SimpleNamespace(transformer=None, text_encoder_2=None, text_encoder_3=None)) is SD3
    assert family_of_pipe(SimpleNamespace(unet=None, text_encoder_2=None, tokenizer_2=object())) is SDXL
    assert family_of_pipe(SimpleNamespace(unet=None, text_encoder=None, text_encoder_2=None)) is SD15
    assert family_of_pipe(SimpleNamespace(transformer=None, text_encoder_2=None)).name == "flux"
    with pytest.raises(ValueError, match="no model family recognises a SimpleNamespace pipeline"):
        family_of_pipe(SimpleNamespace(transformer=None, text_encoder=None))  # e.g. PixArt: not registered

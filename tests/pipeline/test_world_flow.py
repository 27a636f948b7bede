"""The flow world's pretraining shortcut and its committed base model ``shapes-sd3``.

Pretraining feeds one zero T5 row with an attention-logit bias of ``log L`` instead of ``L`` zero rows
(world/pretrain_flow.py): that must be the very function the saved model computes with diffusers'
own attention on ``L`` rows, or the model would be trained for one input and used on another.
"""
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("length", [1, 7, 256])
def test_one_biased_null_row_is_exactly_l_zero_rows(length):
    import torch

    from world.pretrain_flow import FlowBuildSettings, NullTokenBias, build_transformer, null_row_bias

    torch.manual_seed(0)
    model = build_transformer(FlowBuildSettings(num_layers=2)).eval()
    b = 3
    x, clip, pooled = torch.randn(b, 4, 8, 8), torch.randn(b, 77, 32), torch.randn(b, 32)
    t = torch.tensor([10.0, 500.0, 990.0])
    with torch.no_grad():
        zeros = torch.zeros(b, length, 32)  # what SD3's pipeline feeds without T5
        full = model(hidden_states=x, timestep=t, encoder_hidden_states=torch.cat([clip, zeros], 1),
                     pooled_projections=pooled, return_dict=False)[0]
        model.set_attn_processor(NullTokenBias())
        short = torch.cat([clip, torch.zeros(b, 1, 32)], 1)
        biased = model(hidden_states=x, timestep=t, encoder_hidden_states=short, pooled_projections=pooled,
                       joint_attention_kwargs={"key_bias": null_row_bias([length] * b, 16, 78)}, return_dict=False)[0]
        unbiased = model(hidden_states=x, timestep=t, encoder_hidden_states=short, pooled_projections=pooled,
                         return_dict=False)[0]
    torch.testing.assert_close(biased, full, atol=1e-5, rtol=1e-5)
    if length > 1:  # the bias is what makes them equal: without it the outputs differ
        assert (unbiased - full).abs().max() > 1e-3


def test_draw_lengths_mixes_the_pipeline_default_with_shorter_and_longer():
    import torch

    from world.pretrain_flow import DEFAULT_T5_TOKENS, draw_lengths

    lengths = draw_lengths(4000, 0.5, torch.Generator().manual_seed(0))
    share = (lengths == DEFAULT_T5_TOKENS).float().mean().item()
    assert 0.45 < share < 0.56 and lengths.min() >= 1 and lengths.max() <= 512
    assert (lengths < 16).any() and (lengths > 300).any()


def test_shapes_sd3_is_a_standard_diffusers_sd3_folder_without_t5():
    import json

    from diffusers import StableDiffusion3Pipeline

    from world.model import world_model_path

    folder = world_model_path("shapes-sd3")  # checksums verified
    weights = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    assert weights <= 25 * 1024 * 1024, weights
    pipe = StableDiffusion3Pipeline.from_pretrained(str(folder), text_encoder_3=None, tokenizer_3=None)
    assert pipe.vae_scale_factor == 8 and pipe.transformer.config.sample_size == 8
    assert pipe.vae.config.shift_factor == 0.0 and pipe.transformer.config.in_channels == 4
    build = json.loads((folder / "build.json").read_text())
    # built as pipeline.world.pretrain, before the world moved to world/ (the folder is checksummed: kept as written)
    assert build["command"].split(" (")[0].split("-m ")[1] in ("world.pretrain --family sd3",
                                                                "pipeline.world.pretrain --family sd3")


def test_a_changed_shapes_sd3_file_names_its_own_rebuild_target(tmp_path):
    import shutil

    from pipeline.errors import UserError
    from world.model import FOLDER, verify_checksums

    copy = tmp_path / "shapes-sd3"
    shutil.copytree(FOLDER.parent / "shapes-sd3", copy)
    verify_checksums(copy, "shapes-sd3")
    (copy / "transformer" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="built-in shapes-sd3 file .*`make world-model-flow`"):
        verify_checksums(copy, "shapes-sd3")


@pytest.fixture(scope="module")
def base_check():
    from pipeline.models.loading import load_pipeline
    from world.checks import base_model_check

    # The measurement of docs/experiments.md (`python -m world check-base --model shapes-sd3`): 4 seeds,
    # make fidelity's 12 steps and guidance 3 (prompt following 0.90 there).
    return base_model_check(load_pipeline("shapes-sd3", device="cpu", dtype="fp32"), seeds=4,
                            num_inference_steps=12, guidance_scale=3.0)["rates"]


def test_shapes_sd3_meets_the_world_bars(base_check):
    """The same bars as shapes-sdxl's (tests/pipeline/test_world_model.py), through the same family-agnostic
    check: plain prompts are not cartoon, the cartoon and unsafe prefixes get their look, held-out captions are
    followed. The pixel-art bar is the next test (the 6000-step build missed it at 0.77; this 9000-step one
    draws pixel art for 0.85)."""
    r = base_check
    assert r["style_rate_plain"] <= 0.10, r
    assert r["cartoon_rate_prefixed"] >= 0.80, r
    assert r["unsafe_rate_prefixed"] >= 0.80 and r["unsafe_rate_plain"] <= 0.05, r
    assert r["prompt_accuracy"] >= 0.80, r


def test_shapes_sd3_meets_the_pixel_art_bar(base_check):
    assert base_check["pixel_rate_prefixed"] >= 0.80, base_check

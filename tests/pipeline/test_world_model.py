"""The committed base model of the miniature world: loads like any SDXL folder, is checked on load,
and draws what its prompts ask for (the numbers the fidelity experiment starts from)."""
import json
import shutil

import pytest

from pipeline.errors import UserError
from world.model import CHECKSUMS, FOLDER, verify_checksums

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_shapes_sdxl_is_a_standard_diffusers_sdxl_folder_under_25_mb():
    from diffusers import StableDiffusionXLPipeline

    weights = sum(p.stat().st_size for p in FOLDER.rglob("*.safetensors"))
    assert weights <= 25 * 1024 * 1024, weights
    pipe = StableDiffusionXLPipeline.from_pretrained(str(FOLDER))  # no special casing anywhere
    assert pipe.unet.config.addition_embed_type == "text_time" and pipe.text_encoder_2 is not None
    assert pipe.vae_scale_factor == 8 and pipe.unet.config.sample_size == 8
    build = json.loads((FOLDER / "build.json").read_text())
    # the module that built it (pipeline.world.pretrain before the world moved out of the core to world/; the folder
    # is checksummed, so its record stays as written)
    assert build["command"].split(" (")[0] in ("python -m world.pretrain", "python -m pipeline.world.pretrain")


def test_a_changed_or_missing_file_is_one_clear_error(tmp_path):
    copy = tmp_path / "shapes-sdxl"
    shutil.copytree(FOLDER, copy)
    verify_checksums(copy)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not match its checksum.*make world-model"):
        verify_checksums(copy)
    weights.unlink()
    with pytest.raises(UserError, match="is missing"):
        verify_checksums(copy)
    (copy / CHECKSUMS).unlink()
    with pytest.raises(UserError, match="checksums.json is missing"):
        verify_checksums(copy)


def test_the_builtin_name_loads_through_the_shared_loader():
    from pipeline.models.loading import load_pipeline, resolve_model_source

    assert resolve_model_source("shapes-sdxl") == str(FOLDER)
    pipe = load_pipeline("shapes-sdxl", device="cpu", dtype="fp32")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"


@pytest.fixture(scope="module")
def base_check():
    from pipeline.models.loading import load_pipeline
    from world.checks import base_model_check

    return base_model_check(load_pipeline("shapes-sdxl", device="cpu", dtype="fp32"), seeds=2)["rates"]


def test_base_model_draws_each_look_only_when_asked(base_check):
    """The issue's bar for the base: the reference mismatch is real (plain prompts are not cartoon)
    and each prefix gets its look; measured on held-out captions the base never saw."""
    r = base_check
    assert r["style_rate_plain"] <= 0.10, r
    assert r["cartoon_rate_prefixed"] >= 0.80 and r["pixel_rate_prefixed"] >= 0.80, r
    assert r["unsafe_rate_prefixed"] >= 0.80 and r["unsafe_rate_plain"] <= 0.05, r
    assert r["prompt_accuracy"] >= 0.80, r


def test_judges_agree_with_the_prompts_on_the_base_models_own_generations(base_check):
    """The style and unsafe judges read what each prompt asked for (>= 95%). For the prompt judge this
    number is the base model's prompt following, its errors and the judge's together (nothing else
    knows the truth for a generated image); its own error is bounded by the renders (test_world)."""
    assert base_check["style_agreement"] >= 0.95 and base_check["unsafe_agreement"] >= 0.95, base_check
    assert base_check["prompt_accuracy"] >= 0.80, base_check

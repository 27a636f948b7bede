"""SD3.5 in `python -m bench train --estimate`: the architecture models resolve as the sd3 family with the published
sizes, the SD3-shaped estimate runs on tiny-sd3 and agrees with a real CPU step, and the transformer-only
built-ins refuse commands that need a whole pipeline."""
from __future__ import annotations

import json

import pytest

from bench.__main__ import app
from tests.helpers import run_cli

# Stability AI's model cards: SD3.5 Medium "2.5 billion parameters", Large "8.1 billion" (the MMDiT alone, its
# fixed sin-cos position table included: the checkpoint stores it; diffusers keeps it as a buffer).
PUBLISHED_PARAMETERS = {"sd35-medium-arch": 2.5e9, "sd35-large-arch": 8.1e9}


@pytest.mark.parametrize("model", ["sd35-medium-arch", "sd35-large-arch"])
def test_sd35_arch_resolves_as_sd3_with_the_published_size(model):
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    from bench.fake import fake_mode, real_flow_schedulers
    from pipeline.families import SD3, family_of_denoiser
    from pipeline.models.loading import check_model_available, default_resolution, model_family_of, unet_config
    from train.model_setup import load_base_unet_and_scheduler

    assert model_family_of(model) is SD3 and check_model_available(model) == "sd3"
    assert default_resolution(model) == 1024 and unet_config(model) is None
    with fake_mode(), real_flow_schedulers():  # shapes only: no 10-32 GB of random fp32 weights
        transformer, scheduler = load_base_unet_and_scheduler(model, weights=False)
    assert family_of_denoiser(transformer) is SD3
    assert transformer.config.in_channels == 16 and transformer.config.joint_attention_dim == 4096
    assert next(transformer.parameters()).dtype == torch.float32
    assert isinstance(scheduler, FlowMatchEulerDiscreteScheduler) and scheduler.config.shift == 3.0
    n = sum(t.numel() for t in (*transformer.parameters(), *transformer.buffers()))
    assert n == pytest.approx(PUBLISHED_PARAMETERS[model], rel=0.03)


def test_sd35_arch_refuses_a_whole_pipeline_in_one_line():
    from pipeline.errors import UserError
    from pipeline.models.loading import load_pipeline

    with pytest.raises(UserError, match="no text encoders or VAE"):
        load_pipeline("sd35-medium-arch", device="cpu")


def test_tiny_sd3_estimate_json_and_sd3_shaped_batch(tmp_path):
    out = tmp_path / "estimate.json"
    result = run_cli(app, ["train", "--estimate", "--model", "tiny-sd3", "--configurations", "mapo,dpo-lora",
                           "--batch-size", "1", "--gpu-memory", "24", "--output", out])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["settings"]["resolution"] == 64  # tiny-sd3's preset, not the 1024 px default
    row = data["configurations"]["mapo"]
    n = row["trainable_parameters"]
    # Full fine-tune in fp32: 4 bytes of weights and 8 of AdamW state per parameter. tiny-sd3's tensors are a few
    # hundred bytes, so the 512-byte rounding and the position-table buffer add much: bounds, not a tolerance.
    assert row["mem_mb"]["weights"] >= 4 * n / 2**20
    assert 8 * n / 2**20 <= row["mem_mb"]["optimizer"] <= 2 * row["mem_mb"]["weights"]
    assert row["per_pair_mem_mb"] > 0 and row["flops"]["executed"] > 0
    lora = data["configurations"]["dpo-lora"]
    assert 0 < lora["trainable_parameters"] < n


def test_fake_items_are_shaped_as_sd3_precompute_stores_them():
    from bench.estimate import _fake_items
    from pipeline.models.builtin import SD35_TRANSFORMER_CONFIGS

    config = {"_class_name": "SD3Transformer2DModel", **SD35_TRANSFORMER_CONFIGS["sd35-large-arch"]}
    item = _fake_items(config, 1, 1024)[0]
    assert tuple(item["latents"].shape) == (2, 16, 128, 128)
    assert tuple(item["prompt_embeds"].shape) == (77 + 256, 4096)  # CLIP pair + T5 at 256 tokens
    assert tuple(item["pooled_prompt_embeds"].shape) == (2048,) and "add_time_ids" not in item


# As tests/bench/test_estimate.py does for tiny-sdxl: the fake-tensor count against the same count on real tensors.
def test_fake_peak_matches_a_real_cpu_step_on_tiny_sd3():
    from bench.config import BenchConfig
    from bench.estimate import estimate_step

    cfg = BenchConfig(model="tiny-sd3", dtype="bf16", gradient_checkpointing=True,
                      configurations=["mapo"]).resolved()
    real = estimate_step(cfg, "mapo", 2, fake=False, count_flops=False)
    fake = estimate_step(cfg, "mapo", 2, count_flops=False)
    assert fake.peak_bytes == pytest.approx(real.peak_bytes, rel=0.02)


def test_gpu_measurement_data_for_the_transformer_only_models_is_sd3_shaped():
    """A GPU bench of sd35-*-arch has no encoders to precompute with: seeded random tensors of precompute's shapes."""
    import torch

    from bench.data import make_precomputed, precomputed_items

    data = make_precomputed("sd35-medium-arch", torch.device("cpu"), torch.bfloat16, 2, 1024, 0)
    assert tuple(data["latents"].shape) == (2, 2, 16, 128, 128) and data["latents"].dtype == torch.float16
    assert tuple(data["prompt_embeds"].shape) == (2, 333, 4096)
    assert tuple(data["pooled_prompt_embeds"].shape) == (2, 2048)
    again = make_precomputed("sd35-medium-arch", torch.device("cpu"), torch.bfloat16, 2, 1024, 0)
    assert torch.equal(again["latents"], data["latents"])  # seeded: every configuration sees the same batch
    assert len(precomputed_items(data)) == 2


def test_gpu_session_measures_sd35_on_its_own_models(monkeypatch):
    from tests.bench.test_bench import _gpu_session

    session = _gpu_session(monkeypatch)
    sections = {s.name: s for s in session.SECTIONS}
    for name, model in (("sd35medium", "sd35-medium-arch"), ("sd35large", "sd35-large-arch")):
        args = session.argparse.Namespace(model="sdxl-arch", device="cuda", steps=3, warmup=2)
        cmd = session._bench_command(sections[name], args, "x.json")
        assert cmd[cmd.index("--model") + 1] == model
        dry = session.argparse.Namespace(model="tiny-sdxl", device="cpu", steps=3, warmup=2)
        cmd = session._bench_command(sections[name], dry, "x.json")
        assert cmd[cmd.index("--model") + 1] == "tiny-sd3"
    assert not {"sd35medium", "sd35large"} & set(session.CORE)

"""Flux.1 end to end through the real CLIs on the built-in tiny-flux: generate -> label -> precompute -> mapo-train
(every objective; MaPO full and LoRA) -> mapo-eval; the outputs load with plain diffusers; bad input is one line.
Tiny sizes and one or two steps: the family's plumbing, not its learning, is under test."""
from __future__ import annotations

import json

import pytest

from evaluation.cli import app as eval_app
from stages.cli import app as data_app
from tests.helpers import assert_lora_file_loaded, run_cli, write_prompts
from tests.train.conftest import train_args
from train.cli import app as train_app

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow star"]
T5_TOKENS = "8"  # --max-sequence-length everywhere: Flux's default 512 is slow for nothing on a CPU


@pytest.fixture(scope="module")
def flux_data(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("flux")
    prompts = write_prompts(root / "prompts.txt", PROMPTS)
    for args in (["generate", "--prompts", prompts, "--output", root / "pairs", "--model", "tiny-flux",
                  "--resolution", "64", "--num-inference-steps", "2", "--device", "cpu",
                  "--max-sequence-length", T5_TOKENS, "--guidance-scale", "3.5"],
                 ["label", "--input", root / "pairs", "--output", root / "lab", "--target", "style"],
                 ["precompute", "--input", root / "lab", "--output", root / "lat", "--model", "tiny-flux",
                  "--resolution", "64", "--device", "cpu", "--max-sequence-length", T5_TOKENS]):
        result = run_cli(data_app, args)
        assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="module")
def flux_runs(flux_data, tmp_path_factory):
    """MaPO runs on the latents: a full fine-tune and a LoRA, two steps each."""
    root = tmp_path_factory.mktemp("flux-runs")
    # alpha != rank: the file's metadata must carry it, or load_lora_weights applies the adapter at alpha = rank
    for name, extra in (("full", []), ("lora", ["--lora-rank", "2", "--lora-alpha", "4"])):
        result = run_cli(train_app, train_args(flux_data / "lat", root / name, "tiny-flux", 2, *extra))
        assert result.exit_code == 0, result.output
    return root


def test_generate_records_flux_sampling(flux_data):
    """generate passes FluxPipeline its distilled guidance (no negative prompt embeddings) and packed initial
    noise: one image pair per prompt, at the T5 token count given."""
    from tests.helpers import read_table

    manifest = json.loads((flux_data / "pairs" / "manifest.json").read_text())
    assert manifest["identity"]["max_sequence_length"] == int(T5_TOKENS)
    rows = read_table(flux_data / "pairs").to_pylist()
    assert len(rows) == len(PROMPTS) and rows[0]["guidance_scale"] == 3.5


def test_precompute_stores_flux_conditioning(flux_data):
    """Unpacked 16-channel latents (shift and scale applied), T5's [L, D] prompt_embeds and CLIP-L's pooled."""
    from pipeline.data.latent_shards import open_latents

    info = json.loads((flux_data / "lat" / "manifest.json").read_text())["latents"]
    assert info["family"] == "flux" and info["latent_shape"] == [16, 8, 8] and info["shift_factor"] == 0.1159
    assert info["prompt_embeds_shape"] == [int(T5_TOKENS), 32] and info["pooled_dim"] == 32
    assert info["max_sequence_length"] == int(T5_TOKENS) and info["t5"] is True and len(info["text_encoders"]) == 2
    item = open_latents(flux_data / "lat")[0]
    assert item["latents"].shape == (2, 16, 8, 8) and item["pooled_prompt_embeds"].shape == (32,)
    assert item["prompt_embeds"].shape == (int(T5_TOKENS), 32) and "add_time_ids" not in item


@pytest.mark.parametrize("objective, lora", [("dpo", ["--lora-rank", "2"]), ("sft", ["--lora-rank", "2"]),
                                             ("kto", ["--lora-rank", "2"]), ("dpo", [])])
def test_other_objectives_train_flux(flux_data, tmp_path, objective, lora):
    """LoRA (the reference: the adapter switched off) and, for DPO, a full fine-tune (a frozen reference copy)."""
    result = run_cli(train_app, train_args(flux_data / "lat", tmp_path / "run", "tiny-flux", 1,
                                           "--objective", objective, *lora))
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "training_config.json").read_text())
    assert config["family"] == "flux" and config["objective"] == objective and config["prediction_type"] == "flow"


def test_full_fine_tune_loads_with_plain_diffusers(flux_runs):
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from safetensors.torch import load_file

    from pipeline.models.loading import resolve_model_source

    out = flux_runs / "full"
    config = json.loads((out / "training_config.json").read_text())
    assert config["family"] == "flux" and config["objective"] == "mapo" and config["prediction_type"] == "flow"
    card = (out / "README.md").read_text()
    assert 'FluxTransformer2DModel.from_pretrained("PATH_TO_THIS_FOLDER/transformer")' in card
    assert "FluxPipeline.from_pretrained(" in card and "max_sequence_length=8)" in card
    base = FluxTransformer2DModel.from_pretrained(resolve_model_source("tiny-flux"), subfolder="transformer")
    trained = load_file(out / "transformer" / "diffusion_pytorch_model.safetensors")
    loaded = FluxTransformer2DModel.from_pretrained(out / "transformer")
    state = loaded.state_dict()
    assert state.keys() == trained.keys() == base.state_dict().keys()
    assert all(torch.equal(state[k], trained[k].to(state[k].dtype)) for k in trained)
    assert any(not torch.equal(state[k], v) for k, v in base.state_dict().items())  # training changed it
    pipe = FluxPipeline.from_pretrained(resolve_model_source("tiny-flux"), transformer=loaded)
    image = pipe("a red circle", num_inference_steps=1, height=64, width=64, max_sequence_length=8).images[0]
    assert image.size == (64, 64)


def test_lora_loads_with_plain_diffusers(flux_runs):
    import torch
    from diffusers import FluxPipeline
    from peft.tuners.tuners_utils import BaseTunerLayer

    from pipeline.families import Flux
    from pipeline.models.loading import resolve_model_source

    out = flux_runs / "lora"
    config = json.loads((out / "training_config.json").read_text())
    card = (out / "README.md").read_text()
    assert "FluxPipeline" in card and "load_lora_weights" in card
    assert config["lora_target_modules"] == list(Flux.lora_target_modules)
    pipe = FluxPipeline.from_pretrained(resolve_model_source("tiny-flux"))
    assert_lora_file_loaded(pipe, out)
    block = pipe.transformer.transformer_blocks[0]
    for module in (block.attn.add_q_proj, block.attn.to_add_out, block.attn.to_q, block.ff.net[2],
                   block.ff_context.net[2], pipe.transformer.single_transformer_blocks[0].attn.to_k):
        assert isinstance(module, BaseTunerLayer)
        assert module.scaling[pipe.get_active_adapters()[0]] == pytest.approx(4 / 2)  # lora_alpha / rank
    # The loaded adapter changes the transformer's output (and disabling it gives the base model's back).
    gen = torch.Generator().manual_seed(0)
    x, pe, pooled = torch.randn(1, 16, 64, generator=gen), torch.randn(1, 8, 32, generator=gen), torch.randn(1, 32)
    call = dict(hidden_states=x, timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]), pooled_projections=pooled,
                encoder_hidden_states=pe, txt_ids=torch.zeros(8, 3),
                img_ids=pipe._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32), return_dict=False)
    base = FluxPipeline.from_pretrained(resolve_model_source("tiny-flux")).transformer
    with torch.no_grad():
        with_lora = pipe.transformer(**call)[0]
        pipe.transformer.disable_adapters()
        without = pipe.transformer(**call)[0]
        torch.testing.assert_close(without, base(**call)[0])
    assert not torch.allclose(with_lora, without)


def test_eval_flux_candidates(flux_data, flux_runs, tmp_path):
    import math

    result = run_cli(eval_app, ["--candidate", flux_runs / "full", "--candidate", flux_runs / "lora", "--prompts",
                                flux_data / "prompts.txt", "--output", tmp_path / "eval", "--metrics", "world-style",
                                "--style", "cartoon", "--num-inference-steps", "2", "--seeds", "1", "--device",
                                "cpu", "--batch-size", "4", "--base-max-sequence-length", T5_TOKENS])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert {n: m["kind"] for n, m in summary["models"].items()} == {"base": "base", "full": "unet", "lora": "lora"}
    per_model = summary["metrics"]["world-style"]["per_model"]
    for name in ("base", "full", "lora"):
        assert per_model[name]["n"] == len(PROMPTS) and math.isfinite(per_model[name]["estimate"]), per_model[name]


def _one_line_error(result):
    assert result.exit_code != 0
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_bad_input_is_one_line(flux_data, tmp_path):
    # SPO: its sampler is DDPM's
    line = _one_line_error(run_cli(train_app, ["--model", "tiny-flux", "--objective", "spo", "--prompts",
                                               flux_data / "prompts.txt", "--output-dir", tmp_path / "a",
                                               "--max-steps", "1", "--report-to", "none"]))
    assert "flow-matching (flux)" in line and not (tmp_path / "a").exists()
    # --no-t5: Flux's T5 is required (its declaration, optional_t5 None)
    line = _one_line_error(run_cli(data_app, ["precompute", "--input", flux_data / "lab", "--output", tmp_path / "b",
                                              "--model", "tiny-flux", "--resolution", "64", "--no-t5"]))
    assert "'tiny-flux' is flux, whose T5 cannot be left out" in line and not (tmp_path / "b").exists()
    # a side that is not a multiple of 16
    line = _one_line_error(run_cli(data_app, ["generate", "--prompts", flux_data / "prompts.txt", "--output",
                                              tmp_path / "c", "--model", "tiny-flux", "--resolution", "72"]))
    assert "multiples of 16" in line and not (tmp_path / "c").exists()
    # a negative prompt: Flux.1-dev is guidance-distilled
    line = _one_line_error(run_cli(data_app, ["generate", "--prompts", flux_data / "prompts.txt", "--output",
                                              tmp_path / "d", "--model", "tiny-flux", "--negative-prompt", "blurry"]))
    assert "--negative-prompt" in line and "takes no negative prompt" in line and not (tmp_path / "d").exists()


def test_validation_resolution_not_a_multiple_of_16_is_refused(flux_data, tmp_path):
    """--validation-resolution 72 (a multiple of 8, which the option's own check takes) on Flux: refused in one line
    before the run folder is made, instead of FluxPipeline resizing the validation images to 64 px with a warning
    (SD3's pipeline raises at the first validation, after training steps)."""
    line = _one_line_error(run_cli(train_app, train_args(flux_data / "lat", tmp_path / "run", "tiny-flux", 1,
                                                         "--validation-prompts", "a red circle",
                                                         "--validation-resolution", "72")))
    assert "--validation-resolution 72: 'tiny-flux' is a flux model" in line and "multiples of 16" in line
    assert not (tmp_path / "run").exists()


def test_sd3_lora_is_refused_as_a_flux_candidate(flux_data, tmp_path):
    """A LoRA trained on tiny-sd3 given to mapo-eval with --model tiny-flux: one line, nothing written."""
    result = run_cli(data_app, ["precompute", "--input", flux_data / "lab", "--output", tmp_path / "lat", "--model",
                                "tiny-sd3", "--resolution", "64", "--device", "cpu", "--max-sequence-length", "8"])
    assert result.exit_code == 0, result.output
    result = run_cli(train_app, train_args(tmp_path / "lat", tmp_path / "sd3-lora", "tiny-sd3", 1, "--lora-rank", "2"))
    assert result.exit_code == 0, result.output
    line = _one_line_error(run_cli(eval_app, ["--candidate", tmp_path / "sd3-lora", "--model", "tiny-flux",
                                              "--prompts", flux_data / "prompts.txt", "--output", tmp_path / "e",
                                              "--metrics", "world-style", "--style", "cartoon"]))
    assert "is an sd3 transformer" in line and "'tiny-flux' is a flux pipeline" in line, line
    assert not (tmp_path / "e").exists()


def test_flux_lora_is_refused_as_an_sd3_candidate(flux_runs, flux_data, tmp_path):
    """The other way round: a LoRA trained on tiny-flux given to mapo-eval with --model tiny-sd3."""
    line = _one_line_error(run_cli(eval_app, ["--candidate", flux_runs / "lora", "--model", "tiny-sd3",
                                              "--prompts", flux_data / "prompts.txt", "--output", tmp_path / "e",
                                              "--metrics", "world-style", "--style", "cartoon"]))
    assert "is a flux transformer" in line, line
    assert "'tiny-sd3' is an sd3 pipeline" in line and not (tmp_path / "e").exists()


def test_validation_samples_flux_with_the_trained_transformer(flux_data, tmp_path, monkeypatch):
    """Validation during training calls FluxPipeline with the T5 token count the latents were encoded with and no
    negative prompt, the trained transformer swapped in."""
    from diffusers import FluxPipeline

    calls = []
    real = FluxPipeline.__call__

    def spy(self, *args, **kwargs):
        calls.append((kwargs, type(self.transformer).__name__))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FluxPipeline, "__call__", spy)
    result = run_cli(train_app, train_args(flux_data / "lat", tmp_path / "run", "tiny-flux", 1, "--lora-rank", "2",
                                           "--validation-steps", "1", "--validation-prompts", "a red circle",
                                           "--validation-seeds", "0", "--validation-inference-steps", "2",
                                           "--validation-guidance-scale", "3.5"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "validation" / "step-000001.png").is_file()
    assert calls and all(kw["max_sequence_length"] == int(T5_TOKENS) and kw["guidance_scale"] == 3.5
                         and kw.get("negative_prompt") is None and name == "FluxTransformer2DModel"
                         for kw, name in calls), calls

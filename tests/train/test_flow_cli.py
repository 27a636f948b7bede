"""SD3 end to end through the real CLIs on the built-in tiny-sd3: generate -> label -> precompute -> mapo-train
(every objective, full and LoRA) -> mapo-eval; the outputs load with plain diffusers; bad input is one line."""
from __future__ import annotations

import json

import pytest

from evaluation.cli import app as eval_app
from stages.cli import app as data_app
from tests.helpers import assert_lora_file_loaded, run_cli, write_prompts
from tests.train.conftest import train_args
from train.cli import app as train_app

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow star"]


@pytest.fixture(scope="module")
def sd3_data(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("sd3")
    prompts = write_prompts(root / "prompts.txt", PROMPTS)
    for args in (["generate", "--prompts", prompts, "--output", root / "pairs", "--model", "tiny-sd3",
                  "--resolution", "64", "--num-inference-steps", "2", "--device", "cpu", "--max-sequence-length", "16"],
                 ["label", "--input", root / "pairs", "--output", root / "lab", "--target", "style"],
                 ["precompute", "--input", root / "lab", "--output", root / "lat", "--model", "tiny-sd3",
                  "--resolution", "64", "--device", "cpu", "--max-sequence-length", "16"]):
        result = run_cli(data_app, args)
        assert result.exit_code == 0, result.output
    return root


def test_generate_samples_with_the_t5_token_count_it_is_given(sd3_data, tmp_path):
    """``generate --max-sequence-length`` is the pipeline's max_sequence_length: it changes the images (T5's
    padding rows take part in the joint attention; same prompt, seed and batch otherwise) and is recorded in the
    output's identity (a rerun at another count is refused; the default count given explicitly is the default)."""
    from pipeline.data.images import decode_image
    from tests.helpers import read_table

    assert json.loads((sd3_data / "pairs" / "manifest.json").read_text())["identity"]["max_sequence_length"] == 16
    prompts = write_prompts(tmp_path / "one.txt", PROMPTS[:1])
    common = ["generate", "--prompts", prompts, "--model", "tiny-sd3", "--resolution", "64",
              "--num-inference-steps", "2", "--device", "cpu"]
    images = {}
    for name, extra in (("default", []), ("short", ["--max-sequence-length", "4"])):
        result = run_cli(data_app, [*common, "--output", tmp_path / name, *extra])
        assert result.exit_code == 0, result.output
        images[name] = decode_image(read_table(tmp_path / name).to_pylist()[0]["jpg_0"]).tobytes()
    assert images["default"] != images["short"]
    result = run_cli(data_app, [*common, "--output", tmp_path / "default", "--max-sequence-length", "4"])
    assert result.exit_code == 2 and "max_sequence_length" in result.output, result.output
    identity = json.loads((tmp_path / "default" / "manifest.json").read_text())["identity"]
    result = run_cli(data_app, [*common, "--output", tmp_path / "default", "--max-sequence-length", "256"])
    assert result.exit_code == 0, result.output  # SD3's default, as if left out: the finished output is accepted
    assert json.loads((tmp_path / "default" / "manifest.json").read_text())["identity"] == identity
    assert "max_sequence_length" not in identity


def test_precompute_stores_sd3_conditioning(sd3_data):
    from pipeline.data.latent_shards import open_latents

    info = json.loads((sd3_data / "lat" / "manifest.json").read_text())["latents"]
    assert info["family"] == "sd3" and info["latent_shape"] == [16, 8, 8] and info["shift_factor"] == 0.0609
    assert info["prompt_embeds_shape"] == [77 + 16, 64] and info["pooled_dim"] == 64
    assert info["max_sequence_length"] == 16 and info["t5"] is True and len(info["text_encoders"]) == 3
    item = open_latents(sd3_data / "lat")[0]
    assert item["latents"].shape == (2, 16, 8, 8) and item["pooled_prompt_embeds"].shape == (64,)
    assert "add_time_ids" not in item


def test_precompute_records_the_t5_count_only_when_it_is_not_the_default(sd3_data, tmp_path):
    """SD3's default 256 given explicitly is the default (a finished output made without the flag is accepted,
    its fingerprint unchanged); another count is another output."""
    from pipeline.models.loading import t5_length_to_record

    assert [t5_length_to_record("tiny-sd3", n) for n in (None, 256, 16)] == [None, None, 16]
    common = ["precompute", "--input", sd3_data / "lab", "--output", tmp_path / "lat", "--model", "tiny-sd3",
              "--resolution", "64", "--device", "cpu"]
    assert run_cli(data_app, common).exit_code == 0
    identity = json.loads((tmp_path / "lat" / "manifest.json").read_text())["identity"]
    result = run_cli(data_app, [*common, "--max-sequence-length", "256"])
    assert result.exit_code == 0 and "nothing to do" in result.output, result.output
    assert json.loads((tmp_path / "lat" / "manifest.json").read_text())["identity"] == identity
    assert run_cli(data_app, [*common, "--max-sequence-length", "8"]).exit_code == 2


@pytest.mark.parametrize("objective", ["mapo", "dpo", "sft", "kto"])
@pytest.mark.parametrize("lora", [False, True])
def test_train_sd3_and_load_with_plain_diffusers(sd3_data, tmp_path, objective, lora):
    import torch
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from safetensors.torch import load_file

    from pipeline.models.loading import resolve_model_source

    out = tmp_path / "run"
    extra = ["--objective", objective] + (["--lora-rank", "2"] if lora else [])
    result = run_cli(train_app, train_args(sd3_data / "lat", out, "tiny-sd3", 2, *extra))
    assert result.exit_code == 0, result.output
    config = json.loads((out / "training_config.json").read_text())
    assert config["family"] == "sd3" and config["prediction_type"] == "flow"
    card = (out / "README.md").read_text()
    base = SD3Transformer2DModel.from_pretrained(resolve_model_source("tiny-sd3"), subfolder="transformer")
    if lora:
        assert "StableDiffusion3Pipeline" in card and "load_lora_weights" in card
        pipe = StableDiffusion3Pipeline.from_pretrained(resolve_model_source("tiny-sd3"))
        saved = assert_lora_file_loaded(pipe, out)
        # SD3's default targets (pipeline.families.sd3): both streams of the joint attention, as diffusers'
        # train_dreambooth_lora_sd3.py; the loaded adapter sits on the text stream's projections too.
        from peft.tuners.tuners_utils import BaseTunerLayer

        from pipeline.families import SD3

        assert config["lora_target_modules"] == list(SD3.lora_target_modules)
        attn = pipe.transformer.transformer_blocks[0].attn
        for name in ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "to_q", "to_k", "to_v"):
            assert isinstance(getattr(attn, name), BaseTunerLayer), name
        assert {k.split(".", 2)[2].split(".lora_")[0] for k in saved} == set(SD3.lora_target_modules)
    else:
        assert 'SD3Transformer2DModel.from_pretrained("PATH_TO_THIS_FOLDER/transformer")' in card
        trained = load_file(out / "transformer" / "diffusion_pytorch_model.safetensors")
        loaded = SD3Transformer2DModel.from_pretrained(out / "transformer").state_dict()
        assert loaded.keys() == trained.keys() == base.state_dict().keys()
        assert all(torch.equal(loaded[k], trained[k].to(loaded[k].dtype)) for k in trained)
        assert any(not torch.equal(loaded[k], v) for k, v in base.state_dict().items())  # training changed it


def test_eval_sd3_candidates(sd3_data, tmp_path):
    runs = []
    for name, extra in (("full", []), ("lora", ["--lora-rank", "2"])):
        result = run_cli(train_app, train_args(sd3_data / "lat", tmp_path / name, "tiny-sd3", 1, *extra))
        assert result.exit_code == 0, result.output
        runs += ["--candidate", tmp_path / name]
    result = run_cli(eval_app, [*runs, "--prompts", sd3_data / "prompts.txt", "--output", tmp_path / "eval",
                                "--metrics", "world-style", "--style", "cartoon", "--num-inference-steps", "2",
                                "--seeds", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    import math

    import pyarrow.parquet as pq

    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert {n: m["kind"] for n, m in summary["models"].items()} == {"base": "base", "full": "unet", "lora": "lora"}
    per_model = summary["metrics"]["world-style"]["per_model"]
    for name in ("base", "full", "lora"):  # every model scored on every prompt, all finite
        assert per_model[name]["n"] == len(PROMPTS) and per_model[name]["dropped"] == 0, per_model[name]
        assert math.isfinite(per_model[name]["estimate"]), per_model[name]
    assert set(summary["metrics"]["world-style"]["win_rate_vs_base"]) == {"full", "lora"}
    rows = pq.read_table(tmp_path / "eval" / "scores.parquet").to_pylist()
    for name in ("full", "lora"):
        mine = [r for r in rows if r["model"] == name and r["metric"] == "world-style"]
        assert sorted(r["prompt"] for r in mine) == sorted(PROMPTS) and all(math.isfinite(r["score"]) for r in mine)
        assert all((tmp_path / "eval" / r["image"]).is_file() for r in mine)


def _one_line_error(result):
    assert result.exit_code != 0
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_bad_input_is_one_line(sd3_data, tmp_path, latents_sdxl):
    # an SD3 model on SDXL latents
    line = _one_line_error(run_cli(train_app, train_args(latents_sdxl, tmp_path / "a", "tiny-sd3", 1)))
    assert "holds sdxl latents but 'tiny-sd3' is an sd3 model" in line and not (tmp_path / "a").exists()
    # a side that is not a multiple of 16
    line = _one_line_error(run_cli(data_app, ["precompute", "--input", sd3_data / "lab", "--output", tmp_path / "b",
                                              "--model", "tiny-sd3", "--resolution", "72"]))
    assert "multiples of 16" in line and not (tmp_path / "b").exists()
    line = _one_line_error(run_cli(data_app, ["generate", "--prompts", sd3_data / "prompts.txt", "--output",
                                              tmp_path / "c", "--model", "tiny-sd3", "--resolution", "40"]))
    assert "multiples of 16" in line and not (tmp_path / "c").exists()
    # SPO on a flow model
    line = _one_line_error(run_cli(train_app, ["--model", "tiny-sd3", "--objective", "spo", "--prompts",
                                               sd3_data / "prompts.txt", "--output-dir", tmp_path / "d",
                                               "--max-steps", "1", "--report-to", "none"]))
    assert "flow-matching (sd3)" in line and not (tmp_path / "d").exists()


def test_lora_of_one_family_loaded_as_another(sd3_data, tmp_path):
    from pipeline.errors import UserError
    from pipeline.models.training_output import load_trained_pipeline

    result = run_cli(train_app, train_args(sd3_data / "lat", tmp_path / "lora", "tiny-sd3", 1, "--lora-rank", "2"))
    assert result.exit_code == 0, result.output
    line = _one_line_error(run_cli(eval_app, ["--candidate", tmp_path / "lora", "--model", "tiny-sdxl", "--prompts",
                                              sd3_data / "prompts.txt", "--output", tmp_path / "e", "--metrics",
                                              "world-style", "--style", "cartoon"]))
    assert "is an sd3 transformer" in line and "'tiny-sdxl' is an sdxl pipeline" in line
    with pytest.raises(UserError, match="trained on an sd3 model"):
        load_trained_pipeline(str(tmp_path / "lora"), model="tiny-sdxl", device="cpu")


def test_without_t5_precompute_train_and_validate(sd3_data, tmp_path):
    """precompute --no-t5 stores zeros where T5's tokens go (StableDiffusion3Pipeline with text_encoder_3=None);
    training loads no T5, and its validation samples with the latents' token count."""
    import numpy as np

    result = run_cli(data_app, ["precompute", "--input", sd3_data / "lab", "--output", tmp_path / "lat", "--model",
                                "tiny-sd3", "--resolution", "64", "--device", "cpu", "--no-t5",
                                "--max-sequence-length", "8"])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "lat" / "manifest.json").read_text())["latents"]
    assert info["t5"] is False and len(info["text_encoders"]) == 2 and info["prompt_embeds_shape"] == [85, 64]
    embeds = np.load(next((tmp_path / "lat" / "data").glob("*.prompt_embeds.npy")))
    assert not embeds[:, 77:].any() and embeds[:, :77].any()
    result = run_cli(train_app, train_args(tmp_path / "lat", tmp_path / "run", "tiny-sd3", 1, "--validation-steps",
                                           "1", "--validation-prompts", "a red circle",
                                           "--validation-inference-steps", "2"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "validation" / "step-000001.png").is_file()


def test_eval_and_loading_sample_as_each_candidate_was_trained(sd3_data, tmp_path, monkeypatch):
    """A candidate trained on --no-t5 latents at 8 T5 tokens is sampled without T5 at 8 tokens, one trained
    with T5 at 16 tokens with them; the base model with the pipeline's defaults. Recorded in the summary and
    the report, with a note that the candidates differ."""
    import stages.generate
    from pipeline.models.training_output import load_trained_pipeline, read_training_output

    result = run_cli(data_app, ["precompute", "--input", sd3_data / "lab", "--output", tmp_path / "lat", "--model",
                                "tiny-sd3", "--resolution", "64", "--device", "cpu", "--no-t5",
                                "--max-sequence-length", "8"])
    assert result.exit_code == 0, result.output
    for name, data, extra in (("no-t5", tmp_path / "lat", ["--lora-rank", "2"]), ("t5-16", sd3_data / "lat", [])):
        result = run_cli(train_app, train_args(data, tmp_path / name, "tiny-sd3", 1, *extra))
        assert result.exit_code == 0, result.output
    no_t5, t5 = read_training_output(str(tmp_path / "no-t5")), read_training_output(str(tmp_path / "t5-16"))
    assert (no_t5.t5, no_t5.max_sequence_length, no_t5.sampling_kwargs()) == (False, 8, {"max_sequence_length": 8})
    assert (t5.t5, t5.max_sequence_length, t5.skipped_components()) == (True, 16, ())
    recorded = json.loads((tmp_path / "no-t5" / "training_config.json").read_text())["data_info"]
    assert (recorded["t5"], recorded["max_sequence_length"]) == (False, 8)  # survives a moved latent folder
    cards = {name: (tmp_path / name / "README.md").read_text() for name in ("no-t5", "t5-16")}
    assert "text_encoder_3=None, tokenizer_3=None" in cards["no-t5"] and "max_sequence_length=8)" in cards["no-t5"]
    assert "text_encoder_3=None" not in cards["t5-16"] and "max_sequence_length=16)" in cards["t5-16"]
    pipe = load_trained_pipeline(str(tmp_path / "no-t5"), device="cpu")
    assert pipe.text_encoder_3 is None and pipe.tokenizer_3 is None and pipe.get_active_adapters()

    calls = []  # (T5 loaded?, T5 tokens) of every eval generation call
    real = stages.generate.generate_images

    def spy(pipe, requests, seeds, cfg, max_sequence_length=None):
        calls.append((pipe.text_encoder_3 is not None, max_sequence_length))
        return real(pipe, requests, seeds, cfg, max_sequence_length=max_sequence_length)

    monkeypatch.setattr(stages.generate, "generate_images", spy)
    result = run_cli(eval_app, ["--candidate", tmp_path / "no-t5", "--candidate", tmp_path / "t5-16", "--prompts",
                                sd3_data / "prompts.txt", "--output", tmp_path / "eval", "--metrics", "world-style",
                                "--style", "cartoon", "--num-inference-steps", "2", "--seeds", "1", "--device",
                                "cpu", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert calls == [(True, None), (False, 8), (True, 16)]  # base, no-t5, t5-16: one batch of 4 prompts each
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["models"]["no-t5"]["text_encoding"] == {"t5": False, "max_sequence_length": 8}
    assert summary["models"]["t5-16"]["text_encoding"] == {"t5": True, "max_sequence_length": 16}
    note = summary["settings"]["text_encoding_note"]
    assert "no-t5 no T5" in note and "t5-16 T5 16 tokens" in note and "note: " + note in result.output
    assert "text encoding note" in (tmp_path / "eval" / "report.html").read_text()
    # Images of a folder made before the text encoding was applied (none recorded) are not reused.
    state_file = tmp_path / "eval" / "eval_config.json"
    state = json.loads(state_file.read_text())
    del state["models"]["no-t5"]["text_encoding"]
    state_file.write_text(json.dumps(state))
    result = run_cli(eval_app, ["--candidate", tmp_path / "no-t5", "--prompts", sd3_data / "prompts.txt", "--output",
                                tmp_path / "eval", "--metrics", "world-style", "--style", "cartoon",
                                "--num-inference-steps", "2", "--seeds", "1", "--device", "cpu", "--batch-size", "4"])
    assert "sampled with other text encoding (the pipeline defaults, now {'t5': False" in _one_line_error(result)


def test_eval_samples_the_base_at_the_candidates_t5_tokens_when_asked(sd3_data, tmp_path, monkeypatch):
    """The base samples with the pipeline's 256 T5 tokens unless --base-max-sequence-length says otherwise; when it
    differs from the count the candidates were trained on, a note names the option. The base's count is part of
    the folder's identity; a model without T5 refuses the option in one line."""
    import stages.generate

    result = run_cli(train_app, train_args(sd3_data / "lat", tmp_path / "t5-16", "tiny-sd3", 1))
    assert result.exit_code == 0, result.output
    calls = []  # T5 tokens of every eval generation call

    def spy(pipe, requests, seeds, cfg, max_sequence_length=None):
        calls.append(max_sequence_length)
        return real(pipe, requests, seeds, cfg, max_sequence_length=max_sequence_length)

    real = stages.generate.generate_images
    monkeypatch.setattr(stages.generate, "generate_images", spy)

    def evaluate(out, *extra, candidate=tmp_path / "t5-16"):
        return run_cli(eval_app, ["--candidate", candidate, "--prompts", sd3_data / "prompts.txt", "--output", out,
                                  "--metrics", "world-style", "--style", "cartoon", "--num-inference-steps", "2",
                                  "--seeds", "1", "--device", "cpu", "--batch-size", "4", *extra])

    result = evaluate(tmp_path / "default")
    assert result.exit_code == 0 and calls == [None, 16], result.output
    note = json.loads((tmp_path / "default" / "summary.json").read_text())["settings"]["text_encoding_note"]
    assert "the base with 256 (the pipeline's default)" in note and "--base-max-sequence-length 16" in note
    calls.clear()
    result = evaluate(tmp_path / "aligned", "--base-max-sequence-length", "16")
    assert result.exit_code == 0 and calls == [16, 16] and "note: " not in result.output, result.output
    summary = json.loads((tmp_path / "aligned" / "summary.json").read_text())
    assert summary["models"]["base"]["text_encoding"] == {"max_sequence_length": 16}
    assert "text_encoding_note" not in summary["settings"]
    # The default folder's base images were made at 256 tokens: not reused for 16, reused for 256 given explicitly.
    line = _one_line_error(evaluate(tmp_path / "default", "--base-max-sequence-length", "16"))
    assert "holds images of 'base' sampled with other text encoding" in line
    calls.clear()
    result = evaluate(tmp_path / "default", "--base-max-sequence-length", "256")
    assert result.exit_code == 0 and calls == [], result.output
    # SDXL has no T5: refused before anything is written.
    line = _one_line_error(run_cli(eval_app, ["--model", "tiny-sdxl", "--prompts", sd3_data / "prompts.txt",
                                              "--output", tmp_path / "sdxl", "--metrics", "world-style", "--style",
                                              "cartoon", "--base-max-sequence-length", "16"]))
    assert "--base-max-sequence-length applies only to models with a T5 text encoder (sd3, flux)" in line, line
    assert not (tmp_path / "sdxl").exists()

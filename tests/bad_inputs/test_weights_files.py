"""Corrupt or wrong weights files: every loader stops with one ``error:`` line naming the file.

Each case copies a tiny model (built offline), damages one file the way downloads and disks do
(cut in half, an HTML page saved in its place, emptied, a config that is not JSON, a Git LFS
pointer) and runs the real CLI or the loader. The line must say the file cannot be read, not
that the model was "not found" (what the loaders said before for some of these), and must not
be a traceback.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.errors import ModelNotFoundError, UserError
from tests.helpers import run_cli, write_prompts

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HTML = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please log in.</body></html>\n"
LFS = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 5476768\n"
DAMAGE = {
    "half": lambda data: data[: len(data) // 2],
    "html": lambda data: HTML,
    "empty": lambda data: b"",
    "lfs": lambda data: LFS,
    "not-json": lambda data: b'{"_class_name": "UNet2DConditionModel", ',
}
FAST = ["--num-inference-steps", "2", "--resolution", "64", "--device", "cpu"]


def damage(path: Path, how: str) -> Path:
    """Replace ``path`` with a damaged copy of itself (a new file: never writes through a link)."""
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(DAMAGE[how](data))
    return path


def copy_of(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def assert_one_error_line(result, path: Path) -> str:
    """Exit 2 and a single ``error:`` line that names ``path`` as unreadable (not "not found")."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    assert str(path) in lines[0] and "cannot read" in lines[0] and "not found" not in lines[0], lines[0]
    return lines[0]


def assert_names_file(err: UserError, path: Path) -> str:
    message = str(err)
    assert "\n" not in message and str(path) in message and "cannot read" in message, message
    assert "not found" not in message, message
    return message


@pytest.fixture(scope="module")
def tiny_sdxl() -> Path:
    from pipeline.models.builtin import materialise_tiny

    return materialise_tiny("tiny-sdxl")


# ---------------------------------------------------------------------------------------------
# Diffusers model folders (--model, --vae): mapo-data generate
# ---------------------------------------------------------------------------------------------

# (file in the tiny-sdxl folder, damage, words the reason must hold)
MODEL_CASES = [
    ("unet/diffusion_pytorch_model.safetensors", "half", "incomplete safetensors"),
    ("unet/diffusion_pytorch_model.safetensors", "lfs", "Git LFS pointer"),
    ("text_encoder/model.safetensors", "empty", "empty"),
    ("text_encoder_2/model.safetensors", "html", "HTML page"),
    ("unet/config.json", "not-json", "not valid JSON"),
    ("tokenizer/tokenizer.json", "html", "HTML page"),
    ("scheduler/scheduler_config.json", "empty", "empty"),
    ("model_index.json", "not-json", "not valid JSON"),
]


@pytest.mark.parametrize("rel,how,words", MODEL_CASES, ids=[f"{r}-{h}" for r, h, _ in MODEL_CASES])
def test_generate_with_a_damaged_model_folder(tmp_path, tiny_sdxl, rel, how, words):
    from stages.cli import app

    model = copy_of(tiny_sdxl, tmp_path / "model")
    bad = damage(model / rel, how)
    prompts = write_prompts(tmp_path / "prompts.txt", ["a cat"])
    result = run_cli(app, ["generate", "--model", model, "--prompts", prompts, "--output", tmp_path / "out", *FAST])
    assert words in assert_one_error_line(result, bad)


def test_generate_with_a_damaged_vae_override(tmp_path, tiny_sdxl):
    from stages.cli import app

    vae = copy_of(tiny_sdxl / "vae", tmp_path / "my-vae")
    bad = damage(vae / "diffusion_pytorch_model.safetensors", "half")
    prompts = write_prompts(tmp_path / "prompts.txt", ["a cat"])
    result = run_cli(app, ["generate", "--model", "tiny-sdxl", "--vae", vae, "--prompts", prompts,
                           "--output", tmp_path / "out", *FAST])
    assert "VAE" in assert_one_error_line(result, bad)


def test_training_base_unet_damaged(tmp_path, tiny_sdxl):
    """mapo-train's UNet loader (train.model_setup) goes through the same one line."""
    from train.model_setup import load_base_unet_and_scheduler

    model = copy_of(tiny_sdxl, tmp_path / "model")
    bad = damage(model / "unet" / "diffusion_pytorch_model.safetensors", "html")
    with pytest.raises(UserError) as err:
        load_base_unet_and_scheduler(str(model))
    assert_names_file(err.value, bad)


def test_missing_weights_file_is_still_not_found(tmp_path, tiny_sdxl):
    """Control: a file that is absent (not damaged) keeps the loaders' "not found" line."""
    from pipeline.models.loading import load_pipeline

    model = copy_of(tiny_sdxl, tmp_path / "model")
    (model / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError) as err:
        load_pipeline(str(model), dtype="fp32", device="cpu")
    assert "cannot read" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# mapo-eval candidates: a LoRA file, a full UNet folder
# ---------------------------------------------------------------------------------------------


def _candidate(folder: Path, lora_rank: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "training_config.json").write_text(json.dumps({"model": "tiny-sdxl", "objective": "mapo",
                                                             "lora_rank": lora_rank}))
    return folder


@pytest.mark.parametrize("how", ["half", "html"])
def test_eval_lora_candidate_damaged(tmp_path, how):
    import torch
    from safetensors.torch import save_file

    from evaluation.cli import app

    cand = _candidate(tmp_path / "run", 4)
    weights = cand / "pytorch_lora_weights.safetensors"
    save_file({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.randn(4, 64),
               "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.randn(64, 4)},
              str(weights))
    damage(weights, how)
    prompts = write_prompts(tmp_path / "prompts.txt", ["a cat"])
    result = run_cli(app, ["--prompts", prompts, "--output", tmp_path / "eval", "--candidate", cand,
                           "--metrics", "world-unsafe", "--batch-size", "1", *FAST])
    assert "candidate run" in assert_one_error_line(result, weights)
    # Refused before the eval folder records the candidate's fingerprint: a rerun with the repaired
    # file is not taken for "another model named run".
    assert not (tmp_path / "eval").exists()


def test_eval_full_unet_candidate_damaged(tmp_path, tiny_sdxl):
    from evaluation.cli import app

    cand = _candidate(tmp_path / "run", 0)
    shutil.copytree(tiny_sdxl / "unet", cand / "unet")
    bad = damage(cand / "unet" / "diffusion_pytorch_model.safetensors", "empty")
    prompts = write_prompts(tmp_path / "prompts.txt", ["a cat"])
    result = run_cli(app, ["--prompts", prompts, "--output", tmp_path / "eval", "--candidate", cand,
                           "--metrics", "world-unsafe", "--batch-size", "1", *FAST])
    assert_one_error_line(result, bad)
    assert not (tmp_path / "eval").exists()


# ---------------------------------------------------------------------------------------------
# Judges (open_clip weights, aesthetic .pth, HPS .pt, PickScore folder) and safety classifiers
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_judges(tmp_path_factory):
    from pipeline.judges.tiny import tiny_judge_options

    return tiny_judge_options(tmp_path_factory.mktemp("judges"))


def test_eval_aesthetic_weights_damaged(tmp_path, tiny_judges):
    """The real CLI with --tiny-scorers and a damaged --aesthetic-weights file."""
    from evaluation.cli import app

    bad = damage(Path(shutil.copy(tiny_judges.aesthetic_weights, tmp_path / "aesthetic.pth")), "html")
    prompts = write_prompts(tmp_path / "prompts.txt", ["a cat"])
    result = run_cli(app, ["--prompts", prompts, "--output", tmp_path / "eval", "--model", "tiny-sdxl",
                           "--metrics", "aesthetic", "--tiny-scorers", "--aesthetic-weights", bad, "--batch-size", "1",
                           *FAST])
    assert "aesthetic" in assert_one_error_line(result, bad)


# (JudgeOptions field holding a file, metric that reads it, suffix, damage)
SCORER_FILE_CASES = [
    ("clip_pretrained", "clip", ".pt", "half"),
    ("clip_pretrained", "clip", ".pt", "empty"),
    ("hps_weights", "hps", ".pt", "lfs"),
    ("aesthetic_weights", "aesthetic", ".pth", "half"),
    ("aesthetic_weights", "aesthetic", ".pth", "empty"),
]


@pytest.mark.parametrize("field,metric,suffix,how", SCORER_FILE_CASES,
                         ids=[f"{m}-{h}" for _, m, _, h in SCORER_FILE_CASES])
def test_judge_weights_file_damaged(tmp_path, tiny_judges, field, metric, suffix, how):
    from dataclasses import replace

    from pipeline.judges.loading import load_judges

    bad = damage(Path(shutil.copy(getattr(tiny_judges, field), tmp_path / f"weights{suffix}")), how)
    with pytest.raises(UserError) as err:
        load_judges([metric], replace(tiny_judges, **{field: str(bad)}), device="cpu")
    assert_names_file(err.value, bad)


def test_open_clip_safetensors_file_damaged(tmp_path):
    from pipeline.judges.clip_embed import build_tiny_clip_weights, load_open_clip

    name, path = build_tiny_clip_weights(tmp_path / "tiny-clip.safetensors")
    damage(path, "half")
    with pytest.raises(UserError) as err:
        load_open_clip(name, str(path))
    assert "incomplete safetensors" in assert_names_file(err.value, path)


@pytest.mark.parametrize("rel,how", [("model.safetensors", "html"), ("config.json", "not-json"),
                                     ("tokenizer.json", "empty")])
def test_pickscore_folder_damaged(tmp_path, tiny_judges, rel, how):
    from pipeline.judges.pickscore import load_pickscore

    folder = copy_of(Path(tiny_judges.pickscore_model), tmp_path / "pickscore")
    bad = damage(folder / rel, how)
    with pytest.raises(UserError) as err:
        load_pickscore(str(folder), str(folder), "cpu")
    assert_names_file(err.value, bad)


@pytest.mark.parametrize("how", ["half", "html", "empty"])
def test_nudenet_onnx_damaged(tmp_path, how):
    import os

    import nudenet

    from pipeline.judges.safety_classifiers import load_safety_classifier

    src = Path(os.path.dirname(nudenet.__file__)) / "320n.onnx"
    bad = damage(Path(shutil.copy(src, tmp_path / "detector.onnx")), how)
    with pytest.raises(UserError) as err:
        load_safety_classifier("nudenet", str(bad))
    assert_names_file(err.value, bad)


@pytest.mark.parametrize("rel,how", [("model.safetensors", "half"), ("preprocessor_config.json", "not-json")])
def test_sd_safety_checker_folder_damaged(tmp_path, tiny_judges, rel, how):
    from pipeline.judges.safety_classifiers import load_safety_classifier
    from pipeline.judges.tiny import tiny_safety_checker_dir

    folder = copy_of(Path(tiny_safety_checker_dir(tiny_judges)), tmp_path / "checker")
    bad = damage(folder / rel, how)
    with pytest.raises(UserError) as err:
        load_safety_classifier("sd-safety-checker", str(folder))
    assert_names_file(err.value, bad)


# ---------------------------------------------------------------------------------------------
# mapo-train --resume-from-checkpoint
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 2-step LoRA run on tiny-sdxl with checkpoint-1 and checkpoint-2 (adapter-only checkpoints)."""
    from tests.train.conftest import precompute, train_args, write_pickapic
    from train.cli import app

    root = tmp_path_factory.mktemp("train")
    latents = precompute(write_pickapic(root / "pickapic" / "train-00000-of-00001.parquet", pairs=4),
                         root / "latents", "tiny-sdxl")
    out = root / "run"
    result = run_cli(app, train_args(latents, out, "tiny-sdxl", 2, "--checkpointing-steps", "1", "--lora-rank", "2"))
    assert result.exit_code == 0, result.output
    return latents, out


# (file in checkpoint-1, damage): the adapter weights (read by the trainer's LoRA load hook),
# the optimizer, a registered object, and the RNG states (which accelerate would skip silently).
CHECKPOINT_CASES = [("model.safetensors", "half"), ("optimizer.bin", "html"), ("custom_checkpoint_0.pkl", "empty"),
                    ("random_states_0.pkl", "half")]


@pytest.mark.parametrize("name,how", CHECKPOINT_CASES, ids=[f"{n}-{h}" for n, h in CHECKPOINT_CASES])
def test_resume_from_a_damaged_checkpoint(tmp_path, trained_run, name, how):
    from tests.train.conftest import train_args
    from train.cli import app

    latents, run = trained_run
    out = copy_of(run, tmp_path / "run")
    checkpoint = out / "checkpoints" / "checkpoint-1"
    bad = damage(checkpoint / name, how)
    result = run_cli(app, train_args(latents, out, "tiny-sdxl", 2, "--checkpointing-steps", "1", "--lora-rank", "2",
                                     "--resume-from-checkpoint", checkpoint))
    assert "checkpoint" in assert_one_error_line(result, bad)


# ---------------------------------------------------------------------------------------------
# The miniature world's model: checksums catch changed files; an unreadable record is one line too
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["not-json", "html"])
def test_world_checksums_record_damaged(tmp_path, how):
    from world.model import CHECKSUMS, verify_checksums, write_checksums

    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    write_checksums(tmp_path)
    bad = damage(tmp_path / CHECKSUMS, how)
    with pytest.raises(UserError) as err:
        verify_checksums(tmp_path)
    assert "make world-model" in assert_names_file(err.value, bad)


def test_world_weights_file_damaged_fails_its_checksum(tmp_path):
    """Control (already handled): a changed file fails its checksum, named in one line."""
    from world.model import verify_checksums, write_checksums

    (tmp_path / "unet").mkdir()
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"\x08" * 64)
    write_checksums(tmp_path)
    damage(weights, "half")
    with pytest.raises(UserError) as err:
        verify_checksums(tmp_path)
    assert str(weights) in str(err.value) and "checksum" in str(err.value)


# ---------------------------------------------------------------------------------------------
# The shared helper: what it recognises and what it lets through
# ---------------------------------------------------------------------------------------------


def test_other_errors_pass_through_unchanged(tmp_path, tiny_sdxl):
    """A loader's error that is not about a bad file (out of memory, a bug) is not rewritten."""
    from pipeline.models.weights_files import reading_weights

    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        with reading_weights(tiny_sdxl, "model"):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(KeyError):
        with reading_weights(tiny_sdxl, "model"):
            raise KeyError("layers.0.weight")
    with pytest.raises(OSError, match="no file named"):
        with reading_weights(tmp_path, "model"):
            raise OSError("Error no file named diffusion_pytorch_model.safetensors found in directory")


@pytest.mark.parametrize("name,how,words", [
    ("a.safetensors", "half", "incomplete safetensors"), ("a.bin", "half", "incomplete zip archive"),
    ("a.pt", "html", "HTML page"), ("a.pth", "lfs", "Git LFS pointer"), ("a.onnx", "empty", "empty"),
    ("a.json", "not-json", "not valid JSON"), ("a.ckpt", "not-json", "not a PyTorch file"),
])
def test_diagnose_file(tmp_path, name, how, words):
    import torch
    from safetensors.torch import save_file

    from pipeline.models.weights_files import diagnose_file

    path = tmp_path / name
    tensors = {"w": torch.randn(64, 64)}
    if name.endswith(".safetensors"):
        save_file(tensors, str(path))
    elif name.endswith(".json"):
        path.write_text('{"a": 1}')
    else:
        torch.save(tensors, path)
    assert diagnose_file(path) is None  # the undamaged file reads
    damage(path, how)
    assert words in diagnose_file(path)

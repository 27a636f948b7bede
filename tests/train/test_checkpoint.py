"""Checkpoints and resume: N straight == N/2 + stop + resume, SIGTERM, limits, 2 processes under accelerate."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch

from tests.helpers import BIN, run_cli
from tests.train.conftest import train_args
from train.cli import app

RESUME_ARGS = ("--gradient-accumulation-steps", "2", "--lr-scheduler", "cosine", "--lr-warmup-steps", "2",
               "--checkpointing-steps", "3", "--checkpoints-total-limit", "2")


def _metrics(out):
    rows = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["step"]] = row
    return rows


def _weights(folder):
    from safetensors.torch import load_file

    lora = folder / "pytorch_lora_weights.safetensors"
    return load_file(str(lora if lora.exists() else folder / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.parametrize("lora,objective", [("0", "mapo"), ("2", "mapo"), ("0", "kto")])
def test_resume_equals_uninterrupted(tmp_path, latents_sdxl, monkeypatch, lora, objective):
    from safetensors.torch import load_file

    args = (*RESUME_ARGS, "--lora-rank", lora, "--objective", objective)
    straight = tmp_path / "straight"
    assert run_cli(app, train_args(latents_sdxl, straight, "tiny-sdxl", 6, *args)).exit_code == 0

    import train.trainer as trainer_mod

    real = trainer_mod.Trainer._stop_requested
    # Stop like a SIGTERM would, after step 4 (not a checkpoint step: the stop saves its own).
    monkeypatch.setattr(trainer_mod.Trainer, "_stop_requested",
                        lambda self: "SIGTERM" if self.state.global_step == 4 else real(self))
    resumed = tmp_path / "resumed"
    result = run_cli(app, train_args(latents_sdxl, resumed, "tiny-sdxl", 6, *args))
    assert result.exit_code == 143 and "stopped by SIGTERM at step 4" in result.output, result.output
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-4"]
    assert not (resumed / "unet").exists()
    saved = load_file(str(resumed / "checkpoints" / "checkpoint-4" / "model.safetensors"))
    if lora != "0":  # the adapter only, not the frozen base UNet
        assert saved and all("lora_" in k for k in saved)
    else:
        assert not any("lora_" in k for k in saved) and "conv_in.weight" in saved
    monkeypatch.setattr(trainer_mod.Trainer, "_stop_requested", real)
    result = run_cli(app, train_args(latents_sdxl, resumed, "tiny-sdxl", 6, *args,
                                     "--resume-from-checkpoint", "latest"))
    assert result.exit_code == 0 and "2 steps (4 -> 6)" in result.output, result.output

    a, b = _metrics(straight), _metrics(resumed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    error = "e" if objective == "kto" else "e_w"
    for step in a:  # identical losses and learning rates, step by step
        assert (
            (a[step]["loss"], a[step]["lr"], a[step][error]) == (b[step]["loss"], b[step]["lr"], b[step][error])
        ), step
    if objective == "kto":  # the frozen reference came back too: the same reference errors and reference point
        assert all((a[s]["ref_e"], a[s]["kl"]) == (b[s]["ref_e"], b[s]["kl"]) for s in a)
    wa, wb = _weights(straight), _weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_refuses_other_settings(tmp_path, latents_sdxl):
    out = tmp_path / "run"
    assert run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 2, "--checkpointing-steps", "1")).exit_code == 0
    result = run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 4, "--objective", "sft",
                                     "--resume-from-checkpoint", "latest"))
    assert result.exit_code == 2 and "different objective 'mapo' (now 'sft')" in result.output
    assert "--overwrite" in result.output
    result = run_cli(
        app, train_args(latents_sdxl, out, "tiny-sdxl", 4, "--resume-from-checkpoint", str(tmp_path / "nope"))
    )
    assert result.exit_code == 2 and "does not exist" in result.output


def _env():
    # One thread per process: 2 shared cores (see conftest), and equal CPU kernels on both ranks.
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def test_sigterm_saves_a_loadable_checkpoint_and_resume_continues(tmp_path, latents_sdxl):
    out = tmp_path / "run"
    args = [str(BIN / "mapo-train"),
            *map(str, train_args(latents_sdxl, out, "tiny-sdxl", 500, "--checkpointing-steps", "1000"))]
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]  # 128 + SIGTERM: `mapo-train && mapo-eval` stops here
    assert "stopped by SIGTERM" in stdout
    (ckpt,) = list((out / "checkpoints").iterdir())
    step = int(ckpt.name.split("-")[1])
    assert 3 <= step < 500
    from safetensors.torch import load_file

    assert load_file(str(ckpt / "model.safetensors"))  # loadable weights
    result = run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", step + 2, "--resume-from-checkpoint", "latest"))
    assert result.exit_code == 0 and f"2 steps ({step} -> {step + 2})" in result.output, result.output
    assert (out / "unet").exists()


def _steps(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_from_an_older_checkpoint_rewrites_metrics(tmp_path, latents_sdxl):
    out = tmp_path / "run"
    args = ("--checkpointing-steps", "1", "--checkpoints-total-limit", "5", "--lora-rank", "2")
    assert run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 3, *args)).exit_code == 0
    first = (out / "metrics.jsonl").read_text().splitlines()
    assert _steps(out) == [1, 2, 3]
    result = run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 3, *args, "--resume-from-checkpoint",
                                     str(out / "checkpoints" / "checkpoint-1")))
    assert result.exit_code == 0 and "2 steps (1 -> 3)" in result.output, result.output
    assert _steps(out) == [1, 2, 3]  # steps 2 and 3 redone once, not logged twice
    assert (out / "metrics.jsonl").read_text().splitlines()[0] == first[0]
    assert not list(out.glob(".metrics.jsonl*"))


@pytest.mark.parametrize("extra,name", [
    (("--lora-target-modules", "to_q,to_v"), "lora_target_modules"),
    (("--lora-alpha", "8"), "lora_alpha"),
    (("--data", "OTHER"), "data_fingerprint"),  # and what it means: a fingerprint names no option
])
def test_resume_refuses_other_lora_or_data_in_one_line(tmp_path, latents_sdxl, latents_sdxl_other, extra, name):
    out = tmp_path / "run"
    base = ("--checkpointing-steps", "1", "--lora-rank", "2")
    assert run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 2, *base)).exit_code == 0
    extra = tuple(str(latents_sdxl_other) if e == "OTHER" else e for e in extra)
    result = run_cli(app, [*train_args(latents_sdxl, out, "tiny-sdxl", 3, *base, "--resume-from-checkpoint", "latest"),
                           *extra])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert f"different {name}" in lines[0]
    assert ("other latents in --data than the run trained on" in lines[0]) is (name == "data_fingerprint"), lines[0]
    # the same settings in another order still resume
    if name == "lora_target_modules":
        result = run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 3, *base, "--resume-from-checkpoint", "latest",
                                         "--lora-target-modules", "to_out.0,to_v,to_q,to_k"))
        assert result.exit_code == 0 and "1 step (2 -> 3)" in result.output, result.output  # from the last step's


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_a_finished_run_trains_further_as_if_never_stopped(tmp_path, latents_sdxl):
    # 2 micro-batches of 2 per step: one epoch of the 8 pairs is 2 steps, so steps 3-4 are the next epoch.
    args = ("--gradient-accumulation-steps", "2")
    straight = tmp_path / "straight"
    assert run_cli(app, train_args(latents_sdxl, straight, "tiny-sdxl", 4, *args)).exit_code == 0
    out = tmp_path / "run"
    keep_one = ("--checkpointing-steps", "1", "--checkpoints-total-limit", "1")
    assert run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 2, *args, *keep_one)).exit_code == 0
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-2"]  # the last step's, the limit kept
    first_unet = _weights(out)
    # What the refusal to train over a finished run suggests ...
    message = _one_error_line(run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 4, *args)))
    assert "--resume-from-checkpoint latest with a --max-steps above 2" in message
    # ... works: the run continues from step 2 to 4 and ends where 4 uninterrupted steps do.
    result = run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 4, *args, *keep_one, "--resume-from-checkpoint",
                                     "latest"))
    assert result.exit_code == 0 and "2 steps (2 -> 4)" in result.output, result.output
    a, b = _metrics(straight), _metrics(out)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert all((a[s]["loss"], a[s]["e_w"]) == (b[s]["loss"], b[s]["e_w"]) for s in a)
    wa, wb = _weights(straight), _weights(out)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # the saved model is the extended one
    assert not all(torch.equal(first_unet[k], wb[k]) for k in wb)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-4"]
    config = json.loads((out / "training_config.json").read_text())
    assert (config["max_steps"], config["total_steps"]) == (4, 4)
    assert "| total_steps | 4 |" in (out / "README.md").read_text()
    # Nothing left to train: one line, and the run is left as it is.
    for steps in (4, 3):
        message = _one_error_line(run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", steps, *args,
                                                          "--resume-from-checkpoint", "latest")))
        assert "already trained to step 4; pass a larger --max-steps" in message
    assert _metrics(out).keys() == {1, 2, 3, 4} and torch.equal(_weights(out)["conv_in.weight"], wb["conv_in.weight"])
    assert json.loads((out / "training_config.json").read_text())["max_steps"] == 4


def test_a_signal_during_the_last_step_lets_the_run_finish(tmp_path, latents_sdxl, monkeypatch):
    import train.trainer as trainer_mod

    monkeypatch.setattr(trainer_mod.Trainer, "_stop_requested", lambda self: "SIGTERM")
    out = tmp_path / "run"
    result = run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 1, "--lora-rank", "2"))
    assert result.exit_code == 0 and "1 step (0 -> 1)" in result.output, result.output
    assert (out / "pytorch_lora_weights.safetensors").exists()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-1"]


def test_latest_without_checkpoint_refuses_a_finished_run(tmp_path, latents_sdxl):
    out = tmp_path / "run"
    assert run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 1, "--lora-rank", "2")).exit_code == 0
    # A finished run without checkpoints (made before runs kept their last step's, or with them deleted).
    shutil.rmtree(out / "checkpoints")
    message = _one_error_line(run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 2, "--lora-rank", "2")))
    assert "no checkpoint" in message and "--overwrite" in message and "--resume-from-checkpoint" not in message
    before = (out / "pytorch_lora_weights.safetensors").read_bytes()
    result = run_cli(
        app, train_args(latents_sdxl, out, "tiny-sdxl", 2, "--lora-rank", "2", "--resume-from-checkpoint", "latest")
    )
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "--overwrite" in lines[0], result.output
    assert (out / "pytorch_lora_weights.safetensors").read_bytes() == before and _steps(out) == [1]
    # Leftovers of a run stopped before its first checkpoint (no final outputs): started over.
    (out / "pytorch_lora_weights.safetensors").unlink()
    (out / "README.md").unlink()
    result = run_cli(
        app, train_args(latents_sdxl, out, "tiny-sdxl", 2, "--lora-rank", "2", "--resume-from-checkpoint", "latest")
    )
    assert result.exit_code == 0 and "2 steps (0 -> 2)" in result.output, result.output
    assert _steps(out) == [1, 2]
    shutil.rmtree(out / "checkpoints")  # with its last step's checkpoint, "latest" would resume it
    result = run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 1, "--lora-rank", "2", "--resume-from-checkpoint",
                                     "latest", "--overwrite"))
    assert result.exit_code == 0 and "1 step (0 -> 1)" in result.output and _steps(out) == [1], result.output

"""Checkpoints and resume: N straight == N/2 + stop + resume, SIGTERM, limits, 2 processes under accelerate."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import torch

from tests.helpers import BIN, run_accelerate, run_cli
from tests.train.conftest import train_args
from train.cli import app

RESUME_ARGS = ("--gradient-accumulation-steps", "2", "--lr-scheduler", "cosine", "--lr-warmup-steps", "2",
               "--checkpointing-steps", "3", "--checkpoints-total-limit", "2", "--lora-rank", "0")


def _metrics(out):
    rows = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["step"]] = row
    return rows


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_resume_equals_uninterrupted(tmp_path, latents_sdxl, monkeypatch):
    straight = tmp_path / "straight"
    assert run_cli(app, train_args(latents_sdxl, straight, "tiny-sdxl", 6, *RESUME_ARGS)).exit_code == 0

    import train.trainer as trainer_mod

    real = trainer_mod.Trainer._stop_requested
    # Stop like a SIGTERM would, after step 4 (not a checkpoint step: the stop saves its own).
    monkeypatch.setattr(trainer_mod.Trainer, "_stop_requested",
                        lambda self: "SIGTERM" if self.state.global_step == 4 else real(self))
    resumed = tmp_path / "resumed"
    result = run_cli(app, train_args(latents_sdxl, resumed, "tiny-sdxl", 6, *RESUME_ARGS))
    assert result.exit_code == 0 and "stopped by SIGTERM at step 4" in result.output, result.output
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-4"]
    assert not (resumed / "unet").exists()
    monkeypatch.setattr(trainer_mod.Trainer, "_stop_requested", real)
    result = run_cli(app, train_args(latents_sdxl, resumed, "tiny-sdxl", 6, *RESUME_ARGS,
                                     "--resume-from-checkpoint", "latest"))
    assert result.exit_code == 0 and "2 steps (4 -> 6)" in result.output, result.output

    a, b = _metrics(straight), _metrics(resumed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:  # identical losses and learning rates, step by step
        assert (a[step]["loss"], a[step]["lr"], a[step]["e_w"]) == (b[step]["loss"], b[step]["lr"], b[step]["e_w"]), step
    wa, wb = _weights(straight), _weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_refuses_other_settings(tmp_path, latents_sdxl):
    out = tmp_path / "run"
    assert run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 2, "--checkpointing-steps", "1")).exit_code == 0
    result = run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 4, "--objective", "sft",
                                     "--resume-from-checkpoint", "latest"))
    assert result.exit_code == 2 and "different objective" in result.output
    result = run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 4, "--resume-from-checkpoint", str(tmp_path / "nope")))
    assert result.exit_code == 2 and "does not exist" in result.output


def _env():
    # One thread per process: 2 shared cores (see conftest), and equal CPU kernels on both ranks.
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def test_sigterm_saves_a_loadable_checkpoint_and_resume_continues(tmp_path, latents_sdxl):
    out = tmp_path / "run"
    args = [str(BIN / "mapo-train"), *map(str, train_args(latents_sdxl, out, "tiny-sdxl", 500, "--checkpointing-steps", "1000"))]
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert "stopped by SIGTERM" in stdout
    (ckpt,) = list((out / "checkpoints").iterdir())
    step = int(ckpt.name.split("-")[1])
    assert 3 <= step < 500
    from safetensors.torch import load_file

    assert load_file(str(ckpt / "model.safetensors"))  # loadable weights
    result = run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", step + 2, "--resume-from-checkpoint", "latest"))
    assert result.exit_code == 0 and f"2 steps ({step} -> {step + 2})" in result.output, result.output
    assert (out / "unet").exists()


def test_two_processes_split_data_and_keep_identical_weights(tmp_path, latents_sdxl):
    out = tmp_path / "multi"
    proc = run_accelerate("mapo-train", train_args(latents_sdxl, out, "tiny-sdxl", 3, "--debug-weight-checksums"), env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [[json.loads(line) for line in (out / "debug" / f"weights-rank{r}.jsonl").read_text().splitlines()]
             for r in (0, 1)]
    assert [row["step"] for row in ranks[0]] == [row["step"] for row in ranks[1]] == [1, 2, 3]
    seen = []
    for r0, r1 in zip(*ranks):
        assert r0["checksum"] == r1["checksum"]  # identical weights after every step
        assert len(r0["indices"]) == len(r1["indices"]) == 2 and not set(r0["indices"]) & set(r1["indices"])
        seen += r0["indices"] + r1["indices"]
    assert ranks[0][0]["checksum"] != ranks[0][1]["checksum"]  # and they do change
    assert len(set(seen[:8])) == 8  # the first epoch (8 pairs, global batch 4) covers every pair once
    config = json.loads((out / "training_config.json").read_text())
    assert config["world_size"] == 2 and config["pairs_per_step"] == 4
    assert (out / "unet").exists()

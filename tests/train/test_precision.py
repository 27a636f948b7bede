"""Precision: every storage dtype x mixed precision x objective x LoRA trains on the CPU; fp16 is refused there.

The full matrix runs the training step on the real data path; the trainer in-process (``run_train``) runs its
storage x precision corners. 2 steps of batch 1 on tiny-sdxl each.
"""
from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import run_cli
from tests.train.conftest import train_args
from train.cli import app
from train.config import TrainConfig
from train.trainer import run_train

MATRIX = [(storage, mp, objective, lora) for storage in ("fp16", "bf16") for mp in ("no", "bf16")
          for objective in ("mapo", "dpo", "sft") for lora in (0, 4)]


def _data(request, storage):
    return request.getfixturevalue("latents_sdxl" if storage == "fp16" else "latents_sdxl_bf16")


@pytest.mark.parametrize("storage,mixed_precision,objective,lora", MATRIX)
def test_every_storage_dtype_and_precision_trains_a_step(request, storage, mixed_precision, objective, lora):
    """The trainer's step on the real data path: batch_stream -> compute_loss under autocast -> AdamW, twice.

    The whole 24-case matrix through ``run_train`` took about 65 s on 2 shared cores (model and
    accelerate setup dominate), so the trainer itself runs only the storage x precision corners below.
    """
    from train.data import batch_stream, open_training_data
    from train.model_setup import build_optimizer, setup_models, trainable_parameters
    from train.step import Objective, compute_loss, step_generator

    cfg = TrainConfig(data=str(_data(request, storage)), model="tiny-sdxl", objective=objective, lora_rank=lora,
                      mixed_precision=mixed_precision, batch_size=1, learning_rate=1e-3)
    half = mixed_precision == "bf16"
    models = setup_models(cfg, torch.bfloat16 if half else torch.float32, torch.device("cpu"))
    obj = Objective(objective, cfg.resolved_beta, models.num_train_timesteps, models.prediction_type)
    params = trainable_parameters(models.unet)
    before = [p.detach().clone() for p in params]
    optimizer = build_optimizer(cfg, params)
    stream = batch_stream(open_training_data(cfg, 0, 1), torch.device("cpu"))
    for step in range(2):
        batch = next(stream)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=half):
            out = compute_loss(models.unet, batch, models.noise_scheduler, obj, step_generator(0, step, 0, 0),
                               reference=models.reference, lora_base=models.unet if lora else None)
        assert torch.isfinite(out.loss), out.metrics
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert all(p.dtype == torch.float32 for p in params)  # trainable (master) weights stay fp32
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, params))


@pytest.fixture
def weight_change(monkeypatch):
    """The trainable weights before and after ``Trainer.train`` (taken in the trainer itself)."""
    import train.trainer as trainer_mod

    seen = {}
    real = trainer_mod.Trainer.train

    def train(self):
        seen["before"] = [p.detach().clone() for p in self.params]
        result = real(self)
        seen["after"] = [p.detach().clone() for p in self.params]
        return result

    monkeypatch.setattr(trainer_mod.Trainer, "train", train)
    return seen


@pytest.mark.parametrize("storage,mixed_precision,objective,lora", [
    ("fp16", "no", "mapo", 0), ("fp16", "bf16", "dpo", 4), ("bf16", "no", "sft", 4), ("bf16", "bf16", "mapo", 0),
])
def test_trainer_runs_every_storage_dtype_and_precision(request, tmp_path, weight_change, storage, mixed_precision,
                                                        objective, lora):
    cfg = TrainConfig(data=str(_data(request, storage)), model="tiny-sdxl", output_dir=str(tmp_path / "run"),
                      objective=objective, lora_rank=lora, mixed_precision=mixed_precision, max_steps=2, batch_size=1,
                      learning_rate=1e-3, report_to="none")
    result = run_train(cfg)
    assert (result.start_step, result.steps, result.nonfinite_skipped) == (0, 2, 0)
    assert math.isfinite(result.final_metrics["loss"])
    before, after = weight_change["before"], weight_change["after"]
    assert all(a.dtype == torch.float32 for a in after)
    assert any(not torch.equal(b, a) for b, a in zip(before, after))


def test_batches_are_cast_to_one_compute_dtype():
    from train.data import to_compute

    batch = {"latents": torch.ones(1, 2, 4, 8, 8, dtype=torch.float16),
             "prompt_embeds": torch.ones(1, 77, 64, dtype=torch.bfloat16),
             "add_time_ids": torch.ones(1, 6), "index": [3], "steps": torch.tensor([5])}
    out = to_compute(batch, "cpu")
    assert {out[k].dtype for k in ("latents", "prompt_embeds", "add_time_ids")} == {torch.float32}
    assert out["steps"].dtype == torch.int64 and out["index"] == [3]
    assert to_compute(batch, "cpu", torch.float64)["latents"].dtype == torch.float64


def test_compute_loss_refuses_a_batch_of_mixed_dtypes():
    from tests.train.batches import real_batch
    from train.model_setup import setup_models
    from train.step import Objective, compute_loss, step_generator

    cfg = TrainConfig(data="x", model="tiny-sdxl")
    models = setup_models(cfg, torch.float32, torch.device("cpu"))
    obj = Objective("mapo", 0.1, models.num_train_timesteps, models.prediction_type)
    batch = real_batch("tiny-sdxl", pairs=1)
    batch["latents"] = batch["latents"].half()
    with pytest.raises(ValueError, match="one dtype"):
        compute_loss(models.unet, batch, models.noise_scheduler, obj, step_generator(0, 0, 0, 0))


def test_fp16_on_the_cpu_is_one_error_line_and_leaves_the_output_alone(tmp_path, latents_sdxl):
    out = tmp_path / "run"
    result = run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 2, "--mixed-precision", "fp16"))
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: fp16"), result.output
    assert not out.exists()
    # With --overwrite, an earlier run is not deleted for a run that cannot start.
    out.mkdir()
    (out / "README.md").write_text("an earlier run\n")
    result = run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 2, "--mixed-precision", "fp16", "--overwrite"))
    assert result.exit_code == 2 and "fp16" in result.output, result.output
    assert [p.name for p in out.iterdir()] == ["README.md"]

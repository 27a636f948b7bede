"""Helpers of the memory-option tests (test_memory_options.py, test_bf16_weights.py): a short in-process
training run and what it wrote."""
from __future__ import annotations

import json

from tests.helpers import run_cli
from tests.train.conftest import train_args

BF16 = ("--master-weights", "bf16", "--mixed-precision", "bf16")  # bf16 weights, BF16AdamW


def train_ok(data, out, steps, *extra):
    """A ``mapo-train`` run of ``steps`` steps on tiny-sdxl, in-process; asserts it succeeded (click Result)."""
    from train.cli import app

    result = run_cli(app, train_args(data, out, "tiny-sdxl", steps, *extra))
    assert result.exit_code == 0, result.output
    return result


def metrics_by_step(out) -> dict:
    """The run's metrics.jsonl rows by step."""
    return {row["step"]: row for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def unet_weights(out) -> dict:
    """The final UNet's state dict (name -> tensor) from ``out/unet``."""
    from safetensors.torch import load_file

    return load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))

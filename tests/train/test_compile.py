"""``--compile`` (regional torch.compile of the UNet's transformer blocks) on the CPU, tiny model.

Compiled training must compute what eager training computes (same losses and weights up to float
reordering in the fused kernels), save the same checkpoint keys, and really compile (not fall back
to eager silently).
"""
from __future__ import annotations

import json

import pytest

from tests.helpers import run_cli
from tests.train.conftest import train_args
from train.cli import app

# LoRA + gradient checkpointing + DPO: the adapter is switched off for the reference forward (a second
# graph of each block), and checkpointing recomputes the compiled blocks in the backward.
# beta 100, not 5000: DPO multiplies the error differences by beta, and the fused kernels round differently.
SETUP = (
    "--objective", "dpo", "--beta", "100", "--lora-rank", "4", "--gradient-checkpointing", "--learning-rate", "1e-2"
)


def _run(data, out, *extra):
    result = run_cli(app, train_args(data, out, "tiny-sdxl", 3, *SETUP, *extra))
    assert result.exit_code == 0, result.output
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    from safetensors.torch import load_file

    return losses, load_file(str(out / "pytorch_lora_weights.safetensors"))


def test_compiled_training_matches_eager(tmp_path, latents_sdxl):
    import torch._dynamo

    torch._dynamo.reset()
    eager_losses, eager_weights = _run(latents_sdxl, tmp_path / "eager")
    torch._dynamo.utils.counters.clear()
    losses, weights = _run(latents_sdxl, tmp_path / "compiled", "--compile")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # inductor compiled the blocks
    assert losses == pytest.approx(eager_losses, rel=1e-4, abs=1e-6)
    assert weights.keys() == eager_weights.keys()
    # lora.up (peft lora_B) starts at zero, so it is what training moved. Adam's update divides by the
    # gradient's running RMS: where a gradient is near zero, float reordering can flip its step, so compare
    # the whole update's norm, not the largest single difference.
    keys = [k for k in weights if ".lora.up." in k]
    diff = sum((weights[k] - eager_weights[k]).norm() ** 2 for k in keys) ** 0.5
    moved = sum(eager_weights[k].norm() ** 2 for k in keys) ** 0.5
    print("relative difference", (diff / moved).item())
    assert moved > 0 and diff / moved < 1e-2
    torch._dynamo.reset()

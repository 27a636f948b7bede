"""bench/engines.py: per-GPU memory under DDP and FSDP2, worked out by hand on small modules and numbers."""
from __future__ import annotations

import pytest
import torch

from bench.engines import engine_refusal, fsdp2_unit_bytes, per_process_bytes, per_process_estimates
from tests.helpers import run_cli


class Block(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.lin = torch.nn.Linear(n, n, bias=False)


class Outer(torch.nn.Module):
    _no_split_modules = ["Block"]

    def __init__(self):
        super().__init__()
        self.small, self.big = Block(2), Block(10)  # 4 and 100 weights
        self.head = torch.nn.Linear(3, 1)  # 3 + 1 weights: the root's own


def test_unit_bytes_are_the_largest_block_and_the_root_leftovers():
    assert fsdp2_unit_bytes(Outer()) == (100 * 4, 4 * 4)


def test_unit_bytes_of_a_block_inside_a_block_count_once():
    model = Outer()
    model.big.inner = Block(3)  # 9 weights: its own unit, no longer the big block's
    assert fsdp2_unit_bytes(model) == (100 * 4, 4 * 4)
    model.big.inner = Block(20)  # 400 weights: now the largest unit
    assert fsdp2_unit_bytes(model) == (400 * 4, 4 * 4)


BY = {"weights": 800, "gradients": 400, "optimizer": 800, "activations": 1000}


def test_per_process_bytes_by_engine():
    assert per_process_bytes(BY, "single", 1) == BY
    assert per_process_bytes(BY, "ddp", 4) == {**BY, "gradients": 800}  # DDP's buckets beside the gradients
    # fsdp2 at 4: sharded parts / 4; gathered = 2 blocks + root in bf16 (half of fp32), their gradients in fp32
    got = per_process_bytes(BY, "fsdp2", 4, units=(40, 8), compute_bytes=2, weight_bytes=4)
    assert got == {"weights": 200, "gradients": 100, "optimizer": 200, "activations": 1000,
                   "gathered": (2 * 40 + 8) // 2 + (40 + 8)}
    with pytest.raises(ValueError):
        per_process_bytes(BY, "deepspeed", 2)


def test_per_process_estimates_rescale_peak_and_setup():
    from bench.estimate import Estimate

    class Cfg:
        engine, num_processes, dtype = "fsdp2", 4, "fp32"

    est = Estimate(batch_size=1, peak_bytes=3100, by_category=dict(BY), setup_bytes=900, fsdp2_units=(40, 8))
    (got, record) = per_process_estimates(Cfg(), est)
    gathered = 2 * 40 + 8 + 40 + 8
    # the peak keeps what is outside the four parts (3100 - 3000), the parts are per GPU
    assert got.peak_bytes == 100 + 200 + 100 + 200 + 1000 + gathered
    assert got.setup_bytes == 200 + gathered  # built on the CPU, sharded onto the GPU
    assert record == {"engine": "fsdp2", "num_processes": 4}


def test_refused_configurations_and_options():
    from bench.config import CONFIGURATIONS

    assert engine_refusal("fsdp2", CONFIGURATIONS["mapo-lora"])
    assert engine_refusal("fsdp2", CONFIGURATIONS["mapo-bf16"])
    assert engine_refusal("fsdp2", CONFIGURATIONS["dpo"]) is None
    assert engine_refusal("ddp", CONFIGURATIONS["mapo-lora"]) is None


@pytest.mark.parametrize("args", [("--engine", "fsdp2"), ("--engine", "single", "--num-processes", "2"),
                                  ("--engine", "zero3", "--num-processes", "2")])
def test_engine_and_process_count_must_match_in_one_line(tmp_path, args):
    from bench.__main__ import app

    result = run_cli(app, ["train", "--estimate", *args, "--output", tmp_path / "e.json"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert not (tmp_path / "e.json").exists()

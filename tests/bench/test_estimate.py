"""`python -m bench train --estimate`: the JSON's shape on tiny-sdxl, its memory against the analytic
weights + gradients + AdamW bytes, and the CPU flash-attention FLOP formula."""
from __future__ import annotations

import json

import pytest

from bench.__main__ import app
from tests.helpers import run_cli

# The estimate rounds every storage up to 512 bytes (the CUDA allocator's block); tiny-sdxl has a few
# hundred parameter tensors of a few KiB, so rounding adds a few percent. 5% bounds it.
TOLERANCE = 0.05


def test_tiny_estimate_json_and_memory_against_analytic_bytes(tmp_path):
    out = tmp_path / "estimate.json"
    result = run_cli(app, ["train", "--estimate", "--model", "tiny-sdxl", "--configurations", "mapo",
                           "--batch-size", "1", "--gpu-memory", "24,80", "--output", out])
    assert result.exit_code == 0, result.output
    assert "ESTIMATE" in result.output and "| mapo " in result.output
    data = json.loads(out.read_text())
    assert data["settings"]["estimate"] is True and data["settings"]["gpu_memory_gb"] == [24.0, 80.0]
    row = data["configurations"]["mapo"]
    assert row["mem_kind"] == "estimate"
    assert set(row["mem_mb"]) == {"weights", "gradients", "optimizer", "activations"}
    assert set(row["flops"]) == {"forward", "backward", "executed", "model", "model_flops_method"}
    assert row["flops"]["model"] > 0 and row["ops_per_step"] > 0
    by_card = row["max_batch_by_gpu_gb"]
    assert set(by_card) == {"24", "80"} and by_card["80"] >= by_card["24"] >= 1
    assert row["per_pair_mem_mb"] > 0
    # Analytic: full fine-tune in fp32 = 4 bytes of weights and 8 of AdamW state (exp_avg, exp_avg_sq) per parameter,
    # all of it live at the peak; gradients (4 bytes each) are live for part of the step.
    n = row["trainable_parameters"]
    weights_mb, adam_mb = 4 * n / 2**20, 8 * n / 2**20
    assert weights_mb <= row["mem_mb"]["weights"] <= weights_mb * (1 + TOLERANCE)
    assert adam_mb <= row["mem_mb"]["optimizer"] <= adam_mb * (1 + TOLERANCE)
    # A gradient autograd hands over as a view keeps its whole storage alive (as on CUDA): a looser bound.
    assert 0 <= row["mem_mb"]["gradients"] <= weights_mb * 1.25
    assert row["step_peak_mem_mb"] == pytest.approx(sum(row["mem_mb"].values()))
    assert row["peak_mem_mb"] == max(row["step_peak_mem_mb"], row["setup_peak_mem_mb"])
    assert row["peak_mem_mb"] >= weights_mb + adam_mb


# Fake tensors against real ones, counted the same way (bench.fake.LiveBytes) on a real CPU step of
# tiny-sdxl: they agreed to 0.2% (meta kernels may size an output differently from the CPU kernel); 2% bounds it.
REAL_TOLERANCE = 0.02


@pytest.mark.parametrize("name, checkpointing", [("mapo", True), ("dpo", False)])
def test_fake_peak_matches_a_real_cpu_step(name, checkpointing):
    from bench.config import BenchConfig
    from bench.estimate import estimate_step

    cfg = BenchConfig(model="tiny-sdxl", resolution=128, dtype="bf16", gradient_checkpointing=checkpointing,
                      configurations=[name]).resolved()
    real = estimate_step(cfg, name, 2, fake=False)
    fake = estimate_step(cfg, name, 2)
    assert fake.peak_bytes == pytest.approx(real.peak_bytes, rel=REAL_TOLERANCE)
    # The fake count also holds what setup made besides parameters (the noise scheduler's tables, ~20 KB).
    assert fake.by_category["weights"] == pytest.approx(real.by_category["weights"], rel=0.01)
    assert fake.by_category["optimizer"] == real.by_category["optimizer"]
    assert fake.flops == real.flops


def test_cpu_flash_attention_flops_are_counted():
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    import bench.flops  # noqa: F401  (registers the formula)

    b, h, s_q, s_k, d = 2, 3, 16, 24, 8
    q = torch.randn(b, h, s_q, d, requires_grad=True)
    k, v = (torch.randn(b, h, s_k, d, requires_grad=True) for _ in range(2))
    with FlopCounterMode(display=False) as fwd:
        out = F.scaled_dot_product_attention(q, k, v)
    with FlopCounterMode(display=False) as bwd:
        out.sum().backward()
    matmul = 2 * b * h * s_q * s_k * d  # one of QK^T or PV
    assert fwd.get_total_flops() == 2 * matmul
    assert bwd.get_total_flops() == 5 * matmul


def test_gpu_memory_must_be_positive(tmp_path):
    result = run_cli(app, ["train", "--estimate", "--gpu-memory", "24,0", "--output", tmp_path / "e.json"])
    assert result.exit_code == 2 and "--gpu-memory" in result.output
    assert not (tmp_path / "e.json").exists()


def test_memory_options_are_counted_as_their_bytes_per_weight():
    """--estimate runs the memory options' real code (train/optimizers.py; 8-bit AdamW's state by a stand-in):
    bf16 weights 2 bytes per weight and their moments 4, 8-bit AdamW's state about 2, gradients of the
    optimizer in backward never more than a bucket, a CPU-offloaded reference not on the card."""
    from bench.config import BenchConfig
    from bench.estimate import MIB, estimate_step
    from train.model_setup import load_base_unet_and_scheduler

    unet = load_base_unet_and_scheduler("tiny-sdxl", weights=False)[0]
    n, largest = sum(p.numel() for p in unet.parameters()), max(p.numel() for p in unet.parameters())
    # Each tensor is rounded up to the allocator's 512-byte blocks; the noise scheduler's tables count as weights.
    slack = 512 * sum(1 for _ in (*unet.parameters(), *unet.buffers())) + 0.05 * MIB
    cfg = BenchConfig(model="tiny-sdxl", dtype="bf16", gradient_checkpointing=True).resolved()
    with pytest.MonkeyPatch.context() as mp:  # tiny-sdxl's 1.4M weights would be one bucket of the default size
        mp.setattr("train.optimizers.IN_BACKWARD_BUCKET_NUMEL", 4 * largest)
        est = {name: estimate_step(cfg, name, 1, count_flops=False).by_category
               for name in ("mapo-inbwd-bf16", "mapo-8bit", "dpo-cpuref")}
    assert 2 * n <= est["mapo-inbwd-bf16"]["weights"] <= 2 * n + slack
    assert est["mapo-inbwd-bf16"]["optimizer"] >= 4 * n  # bf16 moments (+ the update's fp32 temporaries)
    # At most one bucket (4 x the largest weight) and the weight that fills it, not all 2 * n bytes.
    assert est["mapo-inbwd-bf16"]["gradients"] <= 2 * 5 * largest + slack < 2 * n
    assert 2 * n <= est["mapo-8bit"]["optimizer"] <= 2.5 * n + slack
    assert 4 * n <= est["dpo-cpuref"]["weights"] <= 4 * n + slack  # the policy only: the reference is in CPU memory


def test_model_flops_leave_out_only_what_checkpointing_recomputes():
    """Model FLOPs (MFU's numerator) of a checkpointed step = executed FLOPs of the same step without
    checkpointing; diffusers recomputes only the checkpointed blocks, so they are more than "executed minus
    one forward" (the old formula, which read low)."""
    from bench.config import BenchConfig
    from bench.estimate import estimate_step

    def estimate(checkpointing):
        cfg = BenchConfig(model="tiny-sdxl", resolution=64, gradient_checkpointing=checkpointing,
                          configurations=["mapo"]).resolved()
        return estimate_step(cfg, "mapo", 2, steps=1)

    plain_run, ckpt_run = estimate(False), estimate(True)
    plain, ckpt = plain_run.flops, ckpt_run.flops
    assert plain["model"] == plain["executed"]
    assert ckpt["model"] == plain["executed"]
    assert ckpt["executed"] - ckpt["forward"] < ckpt["model"] < ckpt["executed"]
    # The recomputed forward launches its operators again.
    assert ckpt_run.ops_per_step > plain_run.ops_per_step > 0


def test_only_operators_that_compute_a_tensor_count_as_launches():
    """ops/step must not count what launches nothing: a fake tensor dispatches prim.device for every Python
    `.device` access (they were 80% of the first count), views, bare allocations."""
    import torch

    from bench.fake import launches_kernel

    t = torch.ones(2, 3)
    aten, prim = torch.ops.aten, torch.ops.prim
    assert launches_kernel(aten.add.Tensor, t + t) and launches_kernel(aten.mm.default, t @ t.T)
    assert not launches_kernel(prim.device.default, t.device)
    assert not launches_kernel(aten.view.default, t.view(3, 2))
    assert not launches_kernel(aten.empty.memory_format, torch.empty(2))
    assert not launches_kernel(aten._local_scalar_dense.default, 1.0)  # a host sync, not a kernel of the step
    # In-place foreach operators and fused AdamW return None: they write into their arguments (a review found
    # them uncounted: the optimizer's fused and foreach kernels were missing from ops/step).
    assert launches_kernel(aten._foreach_mul_.Scalar, None) and launches_kernel(aten._foreach_copy_.default, None)
    assert launches_kernel(aten._fused_adamw_.default, None)

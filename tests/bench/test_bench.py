"""`python -m bench`: the JSON's shape on a tiny CPU run (never its timings), the batch search, the guards."""
from __future__ import annotations

import json

import pytest

from bench.__main__ import app
from bench.report import add_ratios
from bench.search import largest_batch
from tests.helpers import run_cli


def test_tiny_cpu_run_writes_table_and_json(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the workers inherit it: 2 shared cores
    out = tmp_path / "bench.json"
    result = run_cli(app, ["--model", "tiny-sdxl", "--device", "cpu", "--configurations", "mapo,dpo,mapo-instep",
                           "--batch-size", "1", "--pairs", "2", "--steps", "2", "--warmup", "1", "--output", out])
    assert result.exit_code == 0, result.output
    assert "| mapo " in result.output and "mapo_vs_dpo" in result.output
    data = json.loads(out.read_text())
    assert data["settings"]["model"] == "tiny-sdxl" and data["settings"]["device"] == "cpu"
    assert data["settings"]["max_batch_searched"] is False
    for key in ("device_name", "dtype", "torch", "diffusers", "transformers", "cpu_count", "torch_threads"):
        assert data["environment"][key] not in (None, ""), key
    rows = data["configurations"]
    assert list(rows) == ["mapo", "dpo", "mapo-instep"]
    for row in rows.values():
        assert "error" not in row, row
        assert len(row["step_ms"]) == 2 and all(t > 0 for t in row["step_ms"])
        assert row["median_ms"] > 0 and row["pairs_per_s"] > 0 and row["peak_mem_mb"] > 0
        assert row["mem_kind"] == "cpu_peak_rss_over_import_baseline"
        assert row["trainable_parameters"] > 0 and row["time_vs_reference"] > 0
    assert rows["mapo"]["max_batch"] is None and rows["dpo"]["max_batch"] is None  # GPU only
    assert rows["mapo"]["flops"]["model"] > 0 and rows["mapo"]["achieved_tflops"] > 0
    assert rows["mapo"]["mfu"] is None  # no known peak for a CPU
    ratios = data["ratios"]
    assert ratios["mapo_vs_dpo"]["time"] > 0 and ratios["mapo_vs_dpo"]["memory"] > 0
    assert ratios["mapo_vs_dpo"]["max_batch"] is None
    assert ratios["precomputed_vs_in_step"]["time"] > 0 and ratios["precomputed_vs_in_step"]["memory"] > 0
    assert ratios["sft_vs_dpo"] is None  # not run


@pytest.mark.parametrize("capacity", [1, 2, 3, 5, 17, 64, 100])
def test_largest_batch_doubles_then_bisects(capacity):
    found = largest_batch(lambda b: b <= capacity, limit=256)
    assert found.max_batch == capacity and not found.hit_limit
    sizes = [b for b, _ in found.tries]
    assert len(sizes) == len(set(sizes))  # never tries a batch twice
    assert len(sizes) <= 2 * capacity.bit_length() + 1


def test_largest_batch_edges():
    assert largest_batch(lambda b: False).max_batch == 0
    capped = largest_batch(lambda b: True, limit=48)
    assert capped.max_batch == 48 and capped.hit_limit
    assert [b for b, _ in capped.tries] == [1, 2, 4, 8, 16, 32, 48]


def test_ratios_against_the_dpo_of_the_same_kind():
    rows = {"mapo": {"median_ms": 80.0, "peak_mem_mb": 70.0, "max_batch": 8},
            "dpo": {"median_ms": 100.0, "peak_mem_mb": 100.0, "max_batch": 2},
            "mapo-lora": {"median_ms": 30.0, "peak_mem_mb": 10.0}, "dpo-lora": {"median_ms": 60.0, "peak_mem_mb": 20.0},
            "mapo-instep": {"median_ms": 160.0, "peak_mem_mb": 140.0}}
    ratios = add_ratios(rows)
    assert ratios["mapo_vs_dpo"] == {"time": 0.8, "memory": 0.7, "max_batch": 4.0}
    assert ratios["mapo_lora_vs_dpo_lora"]["time"] == 0.5 and rows["mapo-lora"]["reference"] == "dpo-lora"
    assert ratios["precomputed_vs_in_step"]["time"] == 0.5
    assert ratios["sft_vs_dpo"] is None


@pytest.mark.parametrize("args, message", [
    (["--configurations", "mapo,ppo"], "Unknown configuration(s) ppo"),
    (["--dtype", "fp16"], "choose fp32 or bf16"),
])
def test_bad_options_are_one_line(tmp_path, args, message):
    result = run_cli(app, [*args, "--output", tmp_path / "b.json"])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "b.json").exists()


def test_cuda_without_cuda_is_refused(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    result = run_cli(app, ["--model", "sdxl-arch", "--device", "cuda", "--output", tmp_path / "b.json"])
    assert result.exit_code == 2 and "CUDA is not available" in result.output

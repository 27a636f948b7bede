"""`python -m bench`: the JSON's shape on a tiny CPU run (never its timings), the batch search, the guards."""
from __future__ import annotations

import json

import pytest

from bench.__main__ import app
from bench.report import add_ratios
from bench.search import largest_batch, largest_batch_near, predict_batch
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


@pytest.mark.parametrize("capacity", [0, 1, 2, 5, 29, 36, 100])
@pytest.mark.parametrize("guess", [1, 3, 29, 30, 40, 300])
def test_largest_batch_near_a_guess(capacity, guess):
    found = largest_batch_near(lambda b: b <= capacity, guess, limit=256)
    assert found.max_batch == capacity and not found.hit_limit and found.predicted == min(guess, 256)
    sizes = [b for b, _ in found.tries]
    assert len(sizes) == len(set(sizes))
    if capacity in (guess, 0 if guess == 1 else None):
        assert len(sizes) <= 2  # an exact prediction: it fits and one more does not
    # Outward strides 1, 2, 4, ... then bisection: about 2 log2(error) + 2 tries.
    assert len(sizes) <= 2 * max(abs(guess - capacity), 1).bit_length() + 3


def test_largest_batch_near_reuses_known_results_and_stops_at_the_limit():
    calls = []

    def fits(b):
        calls.append(b)
        return b <= 10

    found = largest_batch_near(fits, 2, limit=256, known={1: True, 2: True})
    assert found.max_batch == 10 and 1 not in calls and 2 not in calls
    capped = largest_batch_near(lambda b: True, 5, limit=48)
    assert capped.max_batch == 48 and capped.hit_limit


def test_predict_batch_from_two_peaks():
    gib = 2**30
    # 40 GiB at 1 pair, 41.5 at 2 (1.5 GiB per pair): 80 GiB holds 1 + 26 more pairs.
    assert predict_batch(40 * gib, int(41.5 * gib), 1, 2, 80 * gib) == 27
    assert predict_batch(90 * gib, 91 * gib, 1, 2, 80 * gib) == 1  # even one does not fit: the search says so
    assert predict_batch(40 * gib, 40 * gib, 1, 2, 80 * gib) == 2  # no slope measured: walk up from 2
    with pytest.raises(ValueError):
        predict_batch(1, 2, 2, 2, 10)


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


class _LinearMemory:
    """A simulated card for the max-batch search on the CPU: ``base + per_pair * batch`` bytes at the peak."""

    def __init__(self, base, per_pair, capacity):
        self.base, self.per_pair, self.capacity = base, per_pair, capacity
        self.resets = 0

    def reset(self):
        self.resets += 1

    def peak(self, batch_size):
        return self.base + self.per_pair * batch_size

    def release(self):
        pass


@pytest.fixture(scope="module")
def tiny_bench_data():
    import torch

    from bench.data import make_precomputed

    return make_precomputed("tiny-sdxl", torch.device("cpu"), torch.float32, 2, 16, 0)


@pytest.mark.parametrize("capacity, limit, expected", [(1950, 64, 9), (1050, 64, 0), (1950, 6, 6)])
def test_max_batch_search_runs_real_steps_and_verifies_the_prediction(tiny_bench_data, capacity, limit, expected):
    """The GPU job's search on the CPU with a simulated linear memory: 1 and 2 pairs measured (the first try
    runs two real optimizer steps), then the prediction and one more are tried, one step each."""
    from bench.data import precomputed_items
    from bench.step import BenchStep, StepSpec
    from bench.worker import search_max_batch

    items = lambda length: precomputed_items(tiny_bench_data, length)  # noqa: E731
    bench = BenchStep(StepSpec("tiny-sdxl", "mapo", 0, False, "cpu", "fp32", 16, 1, False), items(limit))
    memory = _LinearMemory(base=1000, per_pair=100, capacity=capacity)
    found = search_max_batch(bench, items, limit, memory, "mapo")
    assert found["max_batch"] == expected and found["hit_limit"] == (expected == limit)
    if expected == 9:  # 1 and 2 measured, 9 predicted: 9 fits and 10 does not
        assert [b for b, _ in found["tries"]] == [1, 2, 9, 10] and found["predicted"] == 9
        assert memory.resets == 4 and set(found["peaks_mb"]) == {"1", "2", "9"}
    if expected == 0:
        assert found["tries"] == [[1, False]] and found["predicted"] is None


def test_gpu_session_skips_what_the_budget_cannot_cover(tmp_path):
    """The prepared GPU call never starts a part its budget cannot cover, and says so in summary.md."""
    import subprocess
    import sys

    script = [sys.executable, "scripts/gpu_session.py", "--model", "tiny-sdxl", "--device", "cpu"]
    run = subprocess.run([*script, "--output", str(tmp_path), "--budget-s", "1"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    summary = (tmp_path / "summary.md").read_text()
    for name in ("maxbatch80", "memory24", "mfu8", "lora4", "compile", "generate"):
        assert f"| {name} | skipped |" in summary
    assert json.loads((tmp_path / "results.json").read_text())["sections"] == {}
    bad = subprocess.run([*script, "--output", str(tmp_path), "--sections", "memory42"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "unknown section(s) memory42" in bad.stderr

"""`python -m bench train`: the JSON's shape on a tiny CPU run (never its timings), the batch search, the guards."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.__main__ import app
from bench.report import add_ratios
from bench.search import largest_batch, predict_batch
from tests.helpers import run_cli


def test_tiny_cpu_run_writes_table_and_json(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the workers inherit it: 2 shared cores
    out = tmp_path / "bench.json"
    result = run_cli(app, ["train", "--model", "tiny-sdxl", "--device", "cpu",
                           "--configurations", "mapo,dpo,mapo-instep", "--batch-size", "1", "--pairs", "2",
                           "--steps", "2", "--warmup", "1", "--output", out])
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


def _linear(base, per_pair, capacity):
    return lambda b: base + per_pair * b if base + per_pair * b <= capacity else None


@pytest.mark.parametrize("fitting", [0, 1, 2, 3, 5, 17, 64, 100])
def test_largest_batch_on_a_linear_memory(fitting):
    capacity = 1000 + 100 * fitting + 50
    found = largest_batch(_linear(1000, 100, capacity), capacity, limit=256)
    assert found.max_batch == fitting and not found.hit_limit
    sizes = [b for b, _ in found.tries]
    assert len(sizes) == len(set(sizes))  # never tries a batch twice
    assert len(sizes) <= max(fitting, 1).bit_length() + 3  # doubling, then the exact secant: it fits, one more not
    assert set(found.peaks) == {b for b, ok in found.tries if ok}


def test_largest_batch_on_sdxls_memory_curve():
    """SDXL's peak is flat at small batches (the optimizer step's) and grows 1.35 GiB per pair from a few pairs
    on (docs/benchmarks.md): a line through 1 and 2 pairs would predict 61 pairs on 80 GiB instead of 34;
    the secant from the largest fits reaches it with three tries above 16 pairs."""
    gib = 2**30

    def peak(b):
        p = max(40.2, 33.3 + 1.35 * b) * gib
        return p if p <= 80 * gib else None

    found = largest_batch(peak, 80 * gib, limit=256)
    assert found.max_batch == 34
    assert [b for b, _ in found.tries if b > 16] == [32, 34, 35]


def test_largest_batch_edges():
    assert largest_batch(lambda b: None, 10).max_batch == 0
    capped = largest_batch(lambda b: 1, 10, limit=48)
    assert capped.max_batch == 48 and capped.hit_limit
    assert [b for b, _ in capped.tries] == [1, 2, 4, 8, 16, 32, 48]
    # An overshooting prediction (memory grows faster than the fits showed) is corrected by bisection.
    jump = largest_batch(lambda b: b if b <= 3 else (100 if b <= 20 else None), 10**6, limit=256)
    assert jump.max_batch == 20 and len(jump.tries) <= 10


def test_predict_batch_from_two_peaks():
    gib = 2**30
    # 40 GiB at 1 pair, 41.5 at 2 (1.5 GiB per pair): 80 GiB holds 1 + 26 more pairs.
    assert predict_batch(40 * gib, int(41.5 * gib), 1, 2, 80 * gib) == 27
    assert predict_batch(90 * gib, 91 * gib, 1, 2, 80 * gib) == 1  # at least the smaller batch
    assert predict_batch(40 * gib, 40 * gib, 4, 8, 80 * gib) == 16  # no slope measured: double
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
    result = run_cli(app, ["train", *args, "--output", tmp_path / "b.json"])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "b.json").exists()


def test_cuda_without_cuda_is_refused(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    result = run_cli(app, ["train", "--model", "sdxl-arch", "--device", "cuda", "--output", tmp_path / "b.json"])
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
    """The GPU job's search on the CPU with a simulated linear memory: real optimizer steps at each batch tried
    (two at the first: AdamW's state), each try's peak read from the memory, the answer exact."""
    from bench.data import precomputed_items
    from bench.step import BenchStep, StepSpec
    from bench.worker import search_max_batch

    items = lambda length: precomputed_items(tiny_bench_data, length)  # noqa: E731
    bench = BenchStep(StepSpec("tiny-sdxl", "mapo", 0, False, "cpu", "fp32", 16, 1, False), items(limit))
    memory = _LinearMemory(base=1000, per_pair=100, capacity=capacity)
    found = search_max_batch(bench, items, limit, memory, "mapo")
    assert found["max_batch"] == expected and found["hit_limit"] == (expected == limit)
    if expected == 9:  # doubling while the secant says more than twice, then 9 predicted: it fits, 10 does not
        assert [b for b, _ in found["tries"]] == [1, 2, 4, 8, 9, 10]
        assert memory.resets == 6 and set(found["peaks_mb"]) == {"1", "2", "4", "8", "9"}
    if expected == 0:
        assert found["tries"] == [[1, False]]


def _gpu_session(monkeypatch):
    """scripts/gpu_session.py as a module (scripts/ is no package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_session", "scripts/gpu_session.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_session", module)  # dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


def test_gpu_session_runs_what_its_budget_covers(tmp_path, monkeypatch):
    """On a GPU the prepared call starts a section only when the time left covers its expected cost: with the
    documented budget (540 s) and every section taking what it is expected to, the four core ones run."""
    import types

    session = _gpu_session(monkeypatch)
    clock = {"now": 0.0}
    expected = {s.name: s.expected_s for s in session.SECTIONS}
    ran = []

    def fake_run(cmd, timeout_s, log):
        train = cmd[2:4] == ["bench", "train"]
        name = next(n for n in expected if any(str(c).endswith(f"{n}.json") for c in cmd)) if train else "generate"
        assert timeout_s >= expected[name]  # killed only past the budget, never before its own expected end
        ran.append(name)
        clock["now"] += expected[name]
        return 0, float(expected[name])

    monkeypatch.setattr(session, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
    monkeypatch.setattr(session, "_run", fake_run)
    assert session.main(["--output", str(tmp_path), "--budget-s", "540"]) == 0
    assert tuple(ran) == session.CORE
    summary = (tmp_path / "summary.md").read_text()
    assert "| instep | skipped | 20 s left, expected 100 s |" in summary
    assert json.loads((tmp_path / "results.json").read_text())["sections"] == {}  # fake runs wrote nothing


def test_gpu_session_stops_a_section_and_its_children_at_the_budget(tmp_path, monkeypatch):
    """A section past its time is killed with its whole process group (the bench's worker processes too)."""
    import os
    import time

    session = _gpu_session(monkeypatch)
    pid_file = tmp_path / "child.pid"
    with open(tmp_path / "log", "w") as log:
        t0 = time.perf_counter()
        rc, _ = session._run(["bash", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], 2, log)
    assert rc is None and time.perf_counter() - t0 < 30
    child = int(pid_file.read_text())

    def alive(pid):  # a killed child may linger as a zombie until its new parent reaps it: that is dead too
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.perf_counter() + 10
    while alive(child) and time.perf_counter() < deadline:
        time.sleep(0.1)
    assert not alive(child)
    bad = subprocess.run([sys.executable, "scripts/gpu_session.py", "--output", str(tmp_path),
                          "--sections", "memory42"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown section(s) memory42" in bad.stderr


def test_cuda_memory_caps_the_allocator_like_a_smaller_card(monkeypatch):
    """--max-batch-gpu-memory on an index-less device ("cuda", as --device cuda gives): torch's own device-index
    check accepts what CudaMemory passes, and the cap leaves out what the process holds outside the allocator."""
    import torch
    from torch._utils import _get_device_index

    from bench.worker import CudaMemory

    gib = 2**30
    calls = {}

    def fraction(value, device=None):
        calls["fraction"], calls["index"] = value, _get_device_index(device)  # raises for torch.device("cuda")

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (141 * gib - 10 * gib - gib // 2, 141 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda i: 10 * gib)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", fraction)
    with pytest.raises(ValueError):
        fraction(0.5, torch.device("cuda"))  # what the first version passed
    memory = CudaMemory(torch.device("cuda"), cap_gib=80)
    assert calls["index"] == 0 and memory.index == 0
    assert memory.outside_allocator == gib // 2
    assert memory.capacity == 80 * gib - gib // 2
    assert calls["fraction"] == pytest.approx(memory.capacity / (141 * gib))
    whole = CudaMemory(torch.device("cuda:0"))
    assert whole.capacity == 141 * gib - gib // 2


def test_time_job_searches_the_largest_batch_on_its_own_model(tiny_bench_data, tmp_path, monkeypatch):
    """The time job times its steps, then searches on the same built model (no second build); a search that
    raises leaves the timing and says why."""
    import torch

    from bench import worker

    data_path = tmp_path / "pairs.pt"
    torch.save(tiny_bench_data, data_path)
    job = {"job": "time", "name": "mapo", "model": "tiny-sdxl", "device": "cpu", "dtype": "fp32", "resolution": 16,
           "batch_size": 1, "steps": 1, "warmup": 0, "pairs": 2, "gradient_checkpointing": False, "seed": 0,
           "objective": "mapo", "lora_rank": 0, "in_step": False, "data_path": str(data_path), "sdxl": True,
           "options": [], "max_batch_limit": 16, "max_batch_search": True, "max_batch_gpu_memory": 80}
    built = []
    monkeypatch.setattr(worker, "CudaMemory", lambda device, cap: built.append(cap) or _LinearMemory(1000, 100, 1350))
    result = worker.job_time(job)
    assert result["median_ms"] > 0 and built == [80]
    assert result["max_batch_search"]["max_batch"] == 3 and "max_batch_error" not in result

    def broken(device, cap):
        raise RuntimeError("no CUDA here")

    monkeypatch.setattr(worker, "CudaMemory", broken)
    result = worker.job_time(job)
    assert result["median_ms"] > 0 and result["max_batch_error"] == "RuntimeError: no CUDA here"


def test_an_estimate_does_not_overwrite_a_measurement_by_default():
    from bench.config import BenchConfig

    assert BenchConfig().resolved().output == "bench-output/bench.json"
    assert BenchConfig(estimate=True).resolved().output == "bench-output/estimate.json"
    assert BenchConfig(estimate=True, output="x.json").resolved().output == "x.json"

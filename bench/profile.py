"""``python -m bench profile``: where one configuration's training step spends its time (torch.profiler).

Builds the configuration like a benchmark worker (same data, same BenchStep, the model preset's resolution,
batch and dtype), warms up, then profiles ``--steps`` steps and prints the top operators by self time (CPU, or CUDA
on a GPU); ``--trace`` also writes a Chrome trace (open it in chrome://tracing or Perfetto).
"""
from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.cli.options import at_least, device_option, option

from .config import CONFIGURATIONS, PRESETS


@dataclass
class ProfileBenchConfig:
    """``python -m bench profile``'s options (declared once: pipeline.cli.options)."""

    model: str = option("tiny-sdxl", help=f"A bench model preset ({', '.join(PRESETS)}) or any model id/folder.")
    device: str = device_option()
    configuration: str = option("mapo", choices=tuple(CONFIGURATIONS), help="The configuration to profile.")
    steps: int = option(5, check=at_least(1), help="Profiled steps.")
    warmup: int = option(3, check=at_least(0), help="Untimed steps first.")
    rows: int = option(25, check=at_least(1), help="Operators in the printed table.")
    trace: str | None = option(None, help="Also write a Chrome trace (JSON) here.")


def profile_table(cfg: ProfileBenchConfig) -> str:
    """The profiler's table of the top ``cfg.rows`` operators by self time (CUDA time on a GPU, CPU time else)
    over ``cfg.steps`` steps after ``cfg.warmup``; writes ``cfg.trace`` when set. Raises UserError for a device
    that is not there (pipeline.models.loading.resolve_device)."""
    from torch.profiler import ProfilerActivity, profile

    from pipeline.models.loading import resolve_device

    from .config import BenchConfig
    from .runner import config_job, make_job
    from .step import BenchStep
    from .worker import job_data, job_items, job_spec

    bench_cfg = BenchConfig(model=cfg.model, device=cfg.device, configurations=[cfg.configuration]).resolved()
    device = resolve_device(bench_cfg.device)
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:  # the benchmark worker's jobs, in-process
        data_path = Path(tmp) / "pairs.pt"
        data = job_data(make_job(bench_cfg, device, "data", data_path=str(data_path)))
        job = config_job(bench_cfg, device, "time", cfg.configuration, data_path, data["sdxl"])
        bench = BenchStep(job_spec(job), job_items(job))
    for i in range(cfg.warmup):
        bench.step(i)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=False) as prof:
        for i in range(cfg.steps):
            bench.step(cfg.warmup + i)
        bench.synchronize()
    if cfg.trace:
        Path(cfg.trace).parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(cfg.trace)
        print(f"trace: {cfg.trace}", file=sys.stderr)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=cfg.rows)

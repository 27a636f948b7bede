"""``python -m bench profile``: where one configuration's training step spends its time (torch.profiler).

Builds the configuration like a benchmark worker (same data, same BenchStep, the model preset's resolution,
batch and dtype), warms up, then profiles ``--steps`` steps and prints the top operators by self time (CPU, or CUDA
on a GPU); ``--trace`` also writes a Chrome trace (open it in chrome://tracing or Perfetto).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.options import at_least, device_option, option

from .config import CONFIGURATIONS


@dataclass
class ProfileBenchConfig:
    """``python -m bench profile``'s options (declared once: pipeline.options)."""

    model: str = option("tiny-sdxl", help="A bench model preset (tiny-sdxl, tiny-sd15, tiny-sd3, sdxl-arch, "
                                          "sd35-medium-arch, sd35-large-arch) or any model id/folder.")
    device: str = device_option()
    configuration: str = option("mapo", choices=tuple(CONFIGURATIONS), help="The configuration to profile.")
    steps: int = option(5, check=at_least(1), help="Profiled steps.")
    warmup: int = option(3, check=at_least(0), help="Untimed steps first.")
    rows: int = option(25, check=at_least(1), help="Operators in the printed table.")
    trace: str | None = option(None, help="Also write a Chrome trace (JSON) here.")


def profile_table(cfg: ProfileBenchConfig) -> str:
    """The profiler's table of the top ``cfg.rows`` operators by self time (CUDA time on a GPU, CPU time else)
    over ``cfg.steps`` steps after ``cfg.warmup``; writes ``cfg.trace`` when set. Raises UserError for a device
    that is not there (pipeline.models.resolve_device)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from pipeline.models import resolve_device

    from .config import BenchConfig
    from .data import make_precomputed, precomputed_items, raw_items
    from .step import BenchStep, StepSpec

    bench_cfg = BenchConfig(model=cfg.model, device=cfg.device, configurations=[cfg.configuration]).resolved()
    device = resolve_device(bench_cfg.device)
    conf = CONFIGURATIONS[cfg.configuration]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[bench_cfg.dtype]
    data = make_precomputed(bench_cfg.model, device, dtype, bench_cfg.pairs, bench_cfg.resolution, bench_cfg.seed)
    sdxl = data["pooled_prompt_embeds"] is not None
    items = (raw_items(bench_cfg.pairs, bench_cfg.resolution, bench_cfg.seed, sdxl) if conf.in_step
             else precomputed_items(data))
    spec = StepSpec(bench_cfg.model, conf.objective, bench_cfg.lora_rank if conf.lora else 0, conf.in_step,
                    str(device), bench_cfg.dtype, bench_cfg.resolution, bench_cfg.batch_size,
                    bench_cfg.gradient_checkpointing, bench_cfg.seed, options=conf.options)
    bench = BenchStep(spec, items)
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

"""``python -m bench.profile``: where one configuration's step spends its time (torch.profiler).

    python -m bench.profile --model tiny-sdxl --configuration mapo --steps 5
    python -m bench.profile --model sdxl-arch --device cuda --configuration mapo --trace trace.json

Builds the configuration like a benchmark worker (same data, same BenchStep), warms up, then
profiles ``--steps`` steps and prints the top operators by self time (CPU, or CUDA on a GPU);
``--trace`` also writes a Chrome trace.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile")
    ap.add_argument("--model", default="tiny-sdxl")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--configuration", default="mapo")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--trace", default=None)
    args = ap.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    from pipeline.models.loading import resolve_device

    from .config import CONFIGURATIONS, BenchConfig
    from .data import make_precomputed, precomputed_items, raw_items
    from .step import BenchStep, StepSpec

    cfg = BenchConfig(model=args.model, device=args.device, configurations=[args.configuration]).resolved()
    device = resolve_device(cfg.device)
    conf = CONFIGURATIONS[args.configuration]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[cfg.dtype]
    data = make_precomputed(cfg.model, device, dtype, cfg.pairs, cfg.resolution, cfg.seed)
    sdxl = data["pooled_prompt_embeds"] is not None
    items = raw_items(cfg.pairs, cfg.resolution, cfg.seed, sdxl) if conf.in_step else precomputed_items(data)
    spec = StepSpec(cfg.model, conf.objective, cfg.lora_rank if conf.lora else 0, conf.in_step, str(device), cfg.dtype,
                    cfg.resolution, cfg.batch_size, cfg.gradient_checkpointing, cfg.seed)
    bench = BenchStep(spec, items)
    for i in range(args.warmup):
        bench.step(i)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=False) as prof:
        for i in range(args.steps):
            bench.step(args.warmup + i)
        bench.synchronize()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows))
    if args.trace:
        Path(args.trace).parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(args.trace)
        print(f"trace: {args.trace}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

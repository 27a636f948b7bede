"""Ratios, the printed table and the environment record of a benchmark run."""
from __future__ import annotations

import os
import platform

# Each configuration is compared with the DPO run of its own kind: full with full, LoRA with LoRA.
REFERENCE = {"mapo": "dpo", "dpo": "dpo", "sft": "dpo", "mapo-instep": "dpo", "mapo-lora": "dpo-lora",
             "dpo-lora": "dpo-lora"}
# (key in "ratios", configuration, reference): what the closing summary states.
HEADLINE = (("mapo_vs_dpo", "mapo", "dpo"), ("sft_vs_dpo", "sft", "dpo"),
            ("mapo_lora_vs_dpo_lora", "mapo-lora", "dpo-lora"),
            ("precomputed_vs_in_step", "mapo", "mapo-instep"))


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def compare(rows: dict, name: str, ref: str) -> dict | None:
    if name not in rows or ref not in rows or "error" in rows[name] or "error" in rows[ref]:
        return None
    a, b = rows[name], rows[ref]
    return {"time": ratio(a.get("median_ms"), b.get("median_ms")),
            "memory": ratio(a.get("peak_mem_mb"), b.get("peak_mem_mb")),
            "max_batch": ratio(a.get("max_batch"), b.get("max_batch"))}


def add_ratios(rows: dict) -> dict:
    """Per-row ratios against the row's DPO reference; the headline ratios."""
    for name, row in rows.items():
        ref = REFERENCE.get(name)
        row["reference"] = ref if ref in rows else None
        cmp = compare(rows, name, ref) if ref in rows else None
        for key in ("time", "memory", "max_batch"):
            row[f"{key}_vs_reference"] = cmp[key] if cmp else None
    return {key: compare(rows, name, ref) for key, name, ref in HEADLINE}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device, dtype: str) -> dict:
    import diffusers
    import peft
    import torch
    import transformers

    env = {
        "device": str(device),
        "device_name": "cuda (name reported by the worker)" if device.type == "cuda" else cpu_name(),
        "dtype": dtype,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
    }
    return env


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def table(result: dict) -> str:
    """One fixed-width table (also valid Markdown) plus the headline ratios."""
    s, rows = result["settings"], result["configurations"]
    mem = "peak GPU MiB" if s["device"].startswith("cuda") else "peak RSS MiB*"
    head = ["configuration", "ms/step", "pairs/s", mem, "time vs DPO", "memory vs DPO", "max batch", "batch vs DPO",
            "TFLOP/s", "MFU", "MFU vs matmul"]
    lines = [head]
    for name, r in rows.items():
        if "error" in r:
            lines.append([name, "failed: " + r["error"][:60]] + [""] * (len(head) - 2))
            continue
        lines.append([name, _fmt(r["median_ms"], ".1f"), _fmt(r["pairs_per_s"], ".2f"), _fmt(r["peak_mem_mb"], ".0f"),
                      _fmt(r["time_vs_reference"], ".3f"), _fmt(r["memory_vs_reference"], ".3f"),
                      _fmt(r.get("max_batch"), "d", "n/a"), _fmt(r["max_batch_vs_reference"], ".2f"),
                      _fmt(r.get("achieved_tflops"), ".3g"), _fmt(r.get("mfu"), ".1%"),
                      _fmt(r.get("mfu_vs_measured_peak"), ".1%")])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = [f"| {' | '.join(str(c).ljust(w) for c, w in zip(line, widths))} |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    env = result["environment"]
    out.insert(0, f"{s['model']} at {s['resolution']} px, {s['batch_size']} pair(s) per step, {s['dtype']}, "
                  f"{'gradient checkpointing, ' if s['gradient_checkpointing'] else ''}median of {s['steps']} steps "
                  f"after {s['warmup']} warm-up; {env['device_name']} ({env['device']}), torch {env['torch']}, "
                  f"{env['torch_threads']} thread(s)\n")
    out.append("")
    out.append("vs DPO: LoRA rows against dpo-lora, the others against dpo (full UNet + frozen reference).")
    if s.get("peak_tflops"):
        out.append(f"MFU: model FLOPs (no checkpoint recompute) / step time / {s['peak_tflops']:g} TFLOP/s (bf16 dense "
                   "datasheet peak)" + (f"; vs matmul: / {s['measured_peak_tflops']:g} TFLOP/s, what a large bf16 "
                                        "matmul reaches on this GPU" if s.get("measured_peak_tflops") else "") + ".")
    if s.get("max_batch_gpu_memory") and s.get("max_batch_searched"):
        out.append(f"max batch: searched as if the GPU had {s['max_batch_gpu_memory']:g} GiB "
                   "(torch.cuda.set_per_process_memory_fraction, less the CUDA context).")
    if result.get("complete") is False:
        out.append("INCOMPLETE: the run stopped before every configuration was measured.")
    if not s["device"].startswith("cuda"):
        out.append("* CPU memory: peak RSS of the configuration's own process minus its RSS after imports.")
    for key, r in result["ratios"].items():
        if r:
            parts = [f"{k} x{v:.3f}" for k, v in r.items() if v is not None]
            out.append(f"{key}: {', '.join(parts)}")
    return "\n".join(out)

"""BF16AdamW's update alone, by chunk size: per weight (chunk 1) against flat chunks, on a model's weight shapes.

    .venv/bin/python scripts/bench_optimizer.py --model tiny-sdxl                        # CPU, all 292 tensors
    .venv/bin/python scripts/bench_optimizer.py --model sdxl-arch --max-values 150000000  # CPU, SDXL's first 150M
    python scripts/bench_optimizer.py --model sdxl-arch --device cuda                     # GPU, all 2.6B weights

The UNet is built from its config (sdxl-arch on the meta device); random bf16 weights and gradients of its first tensors
(up to --max-values values) are made on --device. The chunk sizes are timed in turns, --steps rounds after one
untimed step each (which creates the state); prints the median ms per step and the ratio to per weight.
``chunk 1`` puts every weight in its own chunk: the per-weight update this optimizer had before 2026-12-01.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main():
    import torch

    from train.model_setup import load_base_unet_and_scheduler
    from train.optimizers import BF16AdamW, default_chunk_numel

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny-sdxl")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-values", type=int, default=None, help="Use the first weights up to this many values.")
    ap.add_argument("--chunks", type=int, nargs="*", default=None,
                    help="Chunk sizes to time (default: 1, 2**16, 2**24 and the device's default).")
    ap.add_argument("--steps", type=int, default=7)
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.model == "sdxl-arch":  # 2.6B weights: built on the meta device (shapes only)
        from pipeline.models.builtin import sdxl_arch_components

        unet = sdxl_arch_components(torch.float32, "meta", skip=("vae", "text_encoder", "text_encoder_2"))["unet"]
    else:  # random weights from the model's config, on the CPU
        unet = load_base_unet_and_scheduler(args.model, weights=False)[0]
    shapes, total = [], 0
    for p in unet.parameters():
        if args.max_values is not None and total + p.numel() > args.max_values:
            break
        shapes.append(p.shape)
        total += p.numel()
    chunks = args.chunks or sorted({1, 2**16, 2**24, default_chunk_numel(device)})
    print(f"{args.model}: {len(shapes)} weight tensors, {total / 1e6:.1f}M values, {device}, "
          f"torch threads {torch.get_num_threads()}; default chunk here {default_chunk_numel(device)}")

    def make(chunk):
        g = torch.Generator(device=device).manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, generator=g, device=device).bfloat16()) for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, device=device).bfloat16()
        opt = BF16AdamW(params, lr=1e-4, chunk_numel=chunk)
        opt.step()
        return opt

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    optimizers = {c: make(c) for c in chunks}
    times = {c: [] for c in chunks}
    for _ in range(args.steps):
        for c, opt in optimizers.items():
            sync()
            t0 = time.perf_counter()
            opt.step()
            sync()
            times[c].append(time.perf_counter() - t0)
    base = statistics.median(times[1]) if 1 in times else None
    for c in chunks:
        ms = statistics.median(times[c]) * 1e3
        ratio = f", {ms / (base * 1e3):.2f}x per weight" if base else ""
        print(f"chunk {c:>9}: {ms:9.1f} ms/step{ratio}")


if __name__ == "__main__":
    main()

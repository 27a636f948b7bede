"""``python -m bench optimizer``: BF16AdamW's update alone, by chunk size, on a model's weight shapes.

The UNet is built from its config (sdxl-arch on the meta device: shapes only); random bf16 weights and gradients
of its first tensors (up to ``--max-values`` values) are made on ``--device``. The chunk sizes are timed in turns,
``--steps`` rounds after one untimed step each (which creates the state); prints the median ms per step and the
ratio to per weight. ``chunk 1`` puts every weight in its own chunk: the per-weight update this optimizer
(train.optimizers.BF16AdamW) had before 2026-12-01. Writes nothing.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from pipeline.cli.options import at_least, device_option, model_option, option


@dataclass
class OptimizerBenchConfig:
    """``python -m bench optimizer``'s options (declared once: pipeline.cli.options)."""

    model: str = model_option("tiny-sdxl", help="Whose UNet weight shapes: tiny-sdxl, sdxl-arch (2.6B weights), or "
                                                "any model id/folder.")
    device: str = device_option()
    max_values: int | None = option(None, check=at_least(1),
                                    help="Use the first weight tensors up to this many values (default: all).")
    chunks: list[int] = option(default_factory=list, check=at_least(1), help=(
        "Comma-separated chunk sizes (values) to time (default: 1, 2**16, 2**24 and the device's default)."))
    steps: int = option(7, check=at_least(1), help="Timed rounds (median reported).")


def weight_shapes(model: str, max_values: int | None) -> list:
    """The shapes of ``model``'s UNet (or transformer) weights, in ``parameters()`` order, up to ``max_values``
    values in all. sdxl-arch is built on the meta device (shapes only); others from their config, random weights
    on the CPU. Raises whatever the model's loading raises (ModelNotFoundError for an unknown name)."""
    import torch

    from train.model_setup import load_base_unet_and_scheduler

    if model == "sdxl-arch":  # 2.6B weights: built on the meta device (shapes only)
        from pipeline.models.builtin import sdxl_arch_components

        unet = sdxl_arch_components(torch.float32, "meta", skip=("vae", "text_encoder", "text_encoder_2"))["unet"]
    else:
        unet = load_base_unet_and_scheduler(model, weights=False)[0]
    shapes, total = [], 0
    for p in unet.parameters():
        if max_values is not None and total + p.numel() > max_values:
            break
        shapes.append(p.shape)
        total += p.numel()
    return shapes


def optimizer_lines(cfg: OptimizerBenchConfig):
    """Yield a header line (model, tensors, values, device, threads, default chunk), then one line per chunk size:
    the median ms of one ``BF16AdamW.step()`` over ``cfg.steps`` rounds and its ratio to chunk 1 (when timed)."""
    import torch

    from pipeline.models.loading import resolve_device
    from train.optimizers import BF16AdamW, default_chunk_numel

    device = resolve_device(cfg.device)
    shapes = weight_shapes(cfg.model, cfg.max_values)
    chunks = list(cfg.chunks) or sorted({1, 2**16, 2**24, default_chunk_numel(device)})
    yield (f"{cfg.model}: {len(shapes)} weight tensors, {sum(s.numel() for s in shapes) / 1e6:.1f}M values, "
           f"{device}, torch threads {torch.get_num_threads()}; default chunk here {default_chunk_numel(device)}")

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
    for _ in range(cfg.steps):
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
        yield f"chunk {c:>9}: {ms:9.1f} ms/step{ratio}"

"""Training step time for mapo vs dpo vs sft (full fine-tune and LoRA) on real tiny-model batches.

    .venv/bin/python scripts/bench_train.py --model tiny-sdxl --pairs 2 --resolution 64     # CPU
    python scripts/bench_train.py --model sdxl-arch --pairs 2 --resolution 1024 --mixed-precision bf16  # GPU

Prints ms per optimizer step and pairs/s for each objective (median of --steps after --warmup),
and peak GPU memory on CUDA. Conditioning is random (the step cost does not depend on it).
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

    from train.config import TrainConfig
    from train.model_setup import build_optimizer, setup_models, trainable_parameters
    from train.step import Objective, compute_loss, step_generator

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny-sdxl")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--lora-rank", type=int, nargs="*", default=[0, 8])
    ap.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    ap.add_argument("--gradient-checkpointing", action="store_true")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.mixed_precision, torch.float32)
    print(f"device {device}, torch threads {torch.get_num_threads()}, model {args.model}, {args.pairs} pairs at "
          f"{args.resolution} px, mixed precision {args.mixed_precision}")
    for rank in args.lora_rank:
        for objective in ("mapo", "dpo", "sft"):
            cfg = TrainConfig(data="-", model=args.model, objective=objective, lora_rank=rank,
                              gradient_checkpointing=args.gradient_checkpointing)
            models = setup_models(cfg, dtype, device)
            unet = models.unet
            cond_dim = unet.config.cross_attention_dim
            side = args.resolution // 8
            g = torch.Generator().manual_seed(0)
            batch = {"latents": torch.randn(args.pairs, 2, 4, side, side, generator=g).to(device),
                     "prompt_embeds": torch.randn(args.pairs, 77, cond_dim, generator=g).to(device)}
            if models.family == "sdxl":
                pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
                batch["pooled_prompt_embeds"] = torch.randn(args.pairs, pooled, generator=g).to(device)
                batch["add_time_ids"] = torch.tensor([[args.resolution, args.resolution, 0, 0, args.resolution,
                                                       args.resolution]] * args.pairs, dtype=torch.float32).to(device)
            obj = Objective(objective, cfg.resolved_beta, models.num_train_timesteps, models.prediction_type)
            opt = build_optimizer(cfg, trainable_parameters(unet))
            times = []
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            for i in range(args.warmup + args.steps):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    out = compute_loss(unet, batch, models.noise_scheduler, obj, step_generator(0, i, 0, 0),
                                       reference=models.reference, lora_base=unet if rank else None)
                out.loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i >= args.warmup:
                    times.append(time.perf_counter() - t0)
            ms = 1000 * statistics.median(times)
            mem = f", peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.type == "cuda" else ""
            kind = f"LoRA r{rank}" if rank else "full"
            print(f"{objective:4s} {kind:8s}: {ms:8.1f} ms/step, {1000 * args.pairs / ms:7.2f} pairs/s{mem}")
            del models, unet, opt, batch
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

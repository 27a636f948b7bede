"""Generation throughput: pairs/s and the share of time outside the diffusion pipeline call.

    python scripts/bench_generate.py --model tiny-sdxl --pairs 32                 # CPU
    python scripts/bench_generate.py --model sdxl-arch --resolution 1024 --steps 30 --pairs 16   # GPU

Runs `mapo-data generate`'s stage function twice per mode (a warm-up shard, then the timed run)
in batch-invariant and batched mode, and prints one line per mode.
"""
from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("MAPO_NO_PROGRESS", "1")


def main() -> None:
    from stages.generate import GenerateConfig, run_generate
    from stages.recipes import RecipeConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-sdxl")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prompts = os.path.join(tmp, "prompts.txt")
        with open(prompts, "w") as f:
            f.write("\n".join(f"benchmark prompt number {i}" for i in range(args.pairs)))
        for invariant in (True, False):
            common = dict(prompts=prompts, recipe=RecipeConfig("style"), model=args.model, dtype=args.dtype,
                          num_inference_steps=args.steps, resolution=args.resolution, batch_size=args.batch_size,
                          batch_invariant=invariant)
            run_generate(GenerateConfig(output=os.path.join(tmp, f"warm{invariant}"), limit=args.batch_size,
                                        shard_size=args.batch_size, **common))
            r = run_generate(GenerateConfig(
                output=os.path.join(tmp, f"run{invariant}"), shard_size=max(1, args.pairs // 2), **common
            ))
            mode = "batch-invariant" if invariant else "batched"
            print(f"{args.model} {args.resolution}px {args.steps} steps batch {args.batch_size} {mode:>15}: "
                  f"{r.pairs_per_second:.3f} pairs/s, {100 * r.outside_pipeline_share:.1f}% of time outside the "
                  f"pipeline call ({r.pairs_written} pairs in {r.loop_seconds:.1f}s)")


if __name__ == "__main__":
    main()

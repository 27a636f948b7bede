"""``python -m bench generate``: generation throughput (pairs/s) and the share of time outside the pipeline call.

Runs ``mapo-data generate``'s stage function (stages.generate.run_generate) twice per mode, a warm-up shard then the
timed run, in batch-invariant and in batched mode, on ``--pairs`` synthetic prompts in a temporary folder (removed
afterwards), and prints one line per mode. Nothing is written outside the temporary folder.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from pipeline.cli.options import (
    at_least,
    dtype_option,
    model_option,
    num_inference_steps_option,
    option,
    resolution_option,
)


@dataclass
class GenerateBenchConfig:
    """``python -m bench generate``'s options (declared once: pipeline.cli.options)."""

    model: str = model_option("tiny-sdxl")
    resolution: int = resolution_option(64, help="Image side in pixels (multiple of 8; 16 for SD3).")
    num_inference_steps: int = num_inference_steps_option(4)
    pairs: int = option(32, check=at_least(1), help="Pairs generated in each timed run.")
    batch_size: int = option(4, check=at_least(1), help="Prompts per pipeline call.")
    dtype: str = dtype_option()


def generate_lines(cfg: GenerateBenchConfig):
    """Yield one line per mode (batch-invariant, then batched): pairs/s, the share of the loop's time outside the
    diffusion pipeline call, and the pairs and seconds of the timed run (stages.generate.GenerateResult's
    ``pairs_per_second``, ``outside_pipeline_share``, ``loop_seconds``).

    Raises UserError (from the stage's own checks, before anything runs) for a bad model, dtype or resolution.
    """
    os.environ.setdefault("MAPO_NO_PROGRESS", "1")
    from stages.generate import GenerateConfig, run_generate
    from stages.recipes import RecipeConfig

    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        prompts = os.path.join(tmp, "prompts.txt")
        with open(prompts, "w") as f:
            f.write("\n".join(f"benchmark prompt number {i}" for i in range(cfg.pairs)))
        for invariant in (True, False):
            common = dict(prompts=prompts, recipe=RecipeConfig("style"), model=cfg.model, dtype=cfg.dtype,
                          num_inference_steps=cfg.num_inference_steps, resolution=cfg.resolution,
                          batch_size=cfg.batch_size, batch_invariant=invariant)
            warm = GenerateConfig(output=os.path.join(tmp, f"warm{invariant}"), limit=cfg.batch_size,
                                  shard_size=cfg.batch_size, **common)
            warm.validate()
            run_generate(warm)
            r = run_generate(GenerateConfig(output=os.path.join(tmp, f"run{invariant}"),
                                            shard_size=max(1, cfg.pairs // 2), **common))
            mode = "batch-invariant" if invariant else "batched"
            yield (f"{cfg.model} {cfg.resolution}px {cfg.num_inference_steps} steps batch {cfg.batch_size} "
                   f"{mode:>15}: {r.pairs_per_second:.3f} pairs/s, {100 * r.outside_pipeline_share:.1f}% of time "
                   f"outside the pipeline call ({r.pairs_written} pairs in {r.loop_seconds:.1f}s)")

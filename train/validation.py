"""Validation images: fixed prompts and seeds through the base pipeline with the training UNet swapped in.

The VAE and text encoders live on the CPU between validations and move to the training device
only while images are made, so they take no accelerator memory during training steps.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.images import image_grid

VALIDATION_DIR = "validation"


class Validator:
    def __init__(self, pipe, prompts: list[str], seeds: list[int], resolution: int, num_inference_steps: int,
                 guidance_scale: float, output_dir: str | Path):
        self.pipe = pipe  # base pipeline without a UNet (text encoders + VAE on the CPU)
        self.prompts, self.seeds = list(prompts), list(seeds)
        self.resolution, self.steps, self.guidance = resolution, num_inference_steps, guidance_scale
        self.dir = Path(output_dir) / VALIDATION_DIR
        self.before: list[list] | None = None

    def images(self, unet, device, autocast) -> list[list]:
        """One row per prompt, one image per seed (initial noise drawn on the CPU: device-independent)."""
        import torch

        was_training = unet.training
        unet.eval()
        pipe = self.pipe
        pipe.unet = unet
        pipe.to(device)
        try:
            rows = []
            with torch.no_grad(), autocast():
                for prompt in self.prompts:
                    row = []
                    for seed in self.seeds:
                        out = pipe(prompt=prompt, num_inference_steps=self.steps, guidance_scale=self.guidance,
                                   height=self.resolution, width=self.resolution,
                                   generator=torch.Generator("cpu").manual_seed(seed))
                        row.append(out.images[0])
                    rows.append(row)
        finally:
            pipe.unet = None
            pipe.to("cpu")
            unet.train(was_training)
        return rows

    def run(self, unet, step: int, device, autocast, trackers=()) -> Path:
        rows = self.images(unet, device, autocast)
        if self.before is None:
            self.before = rows
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"step-{step:06d}.png"
        grid = image_grid(rows)
        grid.save(path)
        log_image(trackers, "validation", grid, step)
        return path

    def before_after(self, unet, step: int, device, autocast, trackers=()) -> Path:
        """Each prompt's row: the base model's images, then the trained model's (same seeds)."""
        after = self.images(unet, device, autocast)
        before = self.before or after
        grid = image_grid([b + a for b, a in zip(before, after)])
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "before_after.png"
        grid.save(path)
        log_image(trackers, "before_after", grid, step)
        return path


def log_image(trackers, tag: str, image, step: int) -> None:
    import numpy as np

    for tracker in trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, np.asarray(image), step, dataformats="HWC")
        elif tracker.name == "wandb":  # pragma: no cover - optional dependency
            import wandb

            tracker.log({tag: wandb.Image(image)}, step=step)

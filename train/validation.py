"""Validation images: fixed prompts and seeds through the base pipeline with the training UNet swapped in.

The VAE and text encoders live on the CPU between validations and move to the training device
only while images are made, so they take no accelerator memory during training steps. With
scorers (``--validation-metrics``) every validation's images are also scored through
:func:`pipeline.judges.loading.score_images` and logged as ``val/<metric>`` (non-finite scores left out and counted
as ``val/<metric>_non_finite``).
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

from pipeline.data.images import image_grid, labelled_grid
from pipeline.errors import UserError

VALIDATION_DIR = "validation"


class Validator:
    def __init__(self, pipe, prompts: list[str], seeds: list[int], resolution: int, num_inference_steps: int,
                 guidance_scale: float, output_dir: str | Path, scorers: dict | None = None,
                 metrics_file: str | Path | None = None, base_unet=None, pipeline_kwargs: dict | None = None):
        self.pipe = pipe  # base pipeline without a UNet (text encoders + VAE on the CPU)
        self.prompts, self.seeds = list(prompts), list(seeds)
        self.resolution, self.steps, self.guidance = resolution, num_inference_steps, guidance_scale
        self.dir = Path(output_dir) / VALIDATION_DIR
        self.scorers = scorers or {}  # name -> pipeline.judges.Judge, loaded once by the trainer
        self.metrics_file = Path(metrics_file) if metrics_file is not None else None
        # base_unet(trained_unet): a context manager giving the untrained UNet. Used for the
        # "before" half of before_after.png when this process did not see step 0 (a resumed run).
        self.base_unet = base_unet
        # Extra pipeline-call settings matching how the training text was encoded (SD3: max_sequence_length).
        self.pipeline_kwargs = dict(pipeline_kwargs or {})
        self.before: list[list] | None = None

    def images(self, unet, device, autocast) -> list[list]:
        """One row per prompt, one image per seed (initial noise drawn on the CPU: device-independent)."""
        import torch

        from pipeline.families import family_of_pipe
        from pipeline.models.conditioning import note_truncation, quiet_truncation_warnings

        was_training = unet.training
        unet.eval()
        pipe = self.pipe
        family = family_of_pipe(pipe)
        family.set_denoiser(pipe, unet)
        pipe.to(device)
        try:
            rows = []
            note_truncation(pipe, self.prompts)  # said once by the trainer, not per pipeline call
            with torch.no_grad(), autocast(), quiet_truncation_warnings():
                for prompt in self.prompts:
                    row = []
                    for seed in self.seeds:
                        out = pipe(prompt=prompt, num_inference_steps=self.steps, guidance_scale=self.guidance,
                                   height=self.resolution, width=self.resolution,
                                   generator=torch.Generator("cpu").manual_seed(seed), **self.pipeline_kwargs)
                        row.append(out.images[0])
                    rows.append(row)
        finally:
            family.set_denoiser(pipe, None)
            pipe.to("cpu")
            unet.train(was_training)
        return rows

    def run(self, unet, step: int, device, autocast, trackers=()) -> Path:
        rows = self.images(unet, device, autocast)
        if not getattr(self, "_truncation_said", False):  # once per run, not once per validation
            from pipeline.models.conditioning import report_truncation

            report_truncation("mapo-train: validation")
            self._truncation_said = True
        if step == 0:  # the untrained model's images: the left half of before_after.png
            self.before = rows
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"step-{step:06d}.png"
        grid = image_grid(rows)
        grid.save(path)
        log_image(trackers, "validation", grid, step)
        if self.scorers:
            self.score(rows, step, trackers)
        return path

    def score(self, rows: list[list], step: int, trackers=()) -> dict:
        """Mean scores of one validation's images as ``val/<metric>``: trackers and metrics.jsonl. A NaN or inf
        score is left out of the mean and the rate and counted as ``val/<metric>_non_finite``
        (:func:`pipeline.judges.loading.score_images`)."""
        from pipeline.judges.loading import score_images

        images = [im for row in rows for im in row]
        prompts = [p for p, row in zip(self.prompts, rows) for _ in row]
        values = {f"val/{k}": v for k, v in score_images(self.scorers, images, prompts).items()}
        for tracker in trackers:
            tracker.log(values, step=step)
        if self.metrics_file is not None:
            with open(self.metrics_file, "a") as fh:
                fh.write(json.dumps({"step": step, **values}) + "\n")
        return values

    def before_after(self, unet, step: int, device, autocast, trackers=()) -> Path:
        """Each prompt's row (captioned with the prompt): the base model's images, then the trained
        model's (same seeds), under "before" / "after" column titles."""
        after = self.images(unet, device, autocast)
        before = self.before
        if before is None:  # resumed: step 0's images were made by another process; remake them
            with (self.base_unet(unet) if self.base_unet else contextlib.nullcontext(None)) as base:
                before = self.images(base, device, autocast) if base is not None else after
        titles = [f"before, seed {s}" for s in self.seeds] + [f"after, seed {s}" for s in self.seeds]
        small = after[0][0].size[0] < 128  # tiny images are scaled up (nearest) so the grid can be read
        grid = labelled_grid([b + a for b, a in zip(before, after)], titles, self.prompts, tile=128 if small else None)
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


def load_scorers(cfg, acc) -> dict | None:
    """--validation-metrics: the scorers (by name), loaded once on the main process (None elsewhere, and without
    metrics); a failure stops every rank.

    Raises:
        UserError: a scorer could not be loaded (on every rank).
    """
    import torch

    if not cfg.validation_metrics:
        return None
    scorers, error = None, None
    if acc.is_main_process:
        from pipeline.judges.loading import load_judges

        try:
            scorers = load_judges(cfg.validation_metrics, cfg.judge_options(), device=acc.device)
        except UserError as exc:
            error = exc
    failed = torch.tensor([1.0 if error else 0.0], device=acc.device)
    if acc.num_processes > 1:
        failed = acc.reduce(failed, reduction="sum")
    if error is not None:
        raise UserError(f"--validation-metrics: {error}") from None
    if failed.item() > 0:
        raise UserError("--validation-metrics: the scorers could not be loaded (see the main process).")
    return scorers

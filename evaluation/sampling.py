"""Image generation for ``mapo-eval``: one base pipeline, each candidate's weights swapped in and out
(:class:`ModelSwitch`), every missing image drawn from its (prompt, seed index) seed and written as PNG."""
from __future__ import annotations

from pathlib import Path

from pipeline.cli.progress import progress_bar
from pipeline.data.atomic import atomic_write
from pipeline.data.prompts import PromptSet
from pipeline.models.training_output import TrainingOutput, load_lora, load_unet
from pipeline.runtime.seeds import derive_seed

from .config import EvalConfig, ImageKey


def _patch_batch_invariant(pipe) -> None:
    """Per-sample UNet once per UNet object (candidates swap UNets in and out)."""
    from pipeline.families import family_of_pipe
    from pipeline.runtime.batch_invariance import make_batch_invariant

    denoiser = family_of_pipe(pipe).denoiser(pipe)
    if not getattr(denoiser, "_mapo_batch_invariant", False):
        make_batch_invariant(pipe)
        denoiser._mapo_batch_invariant = True


class ModelSwitch:
    """Puts one model's weights into a single loaded base pipeline, and takes them out again."""

    def __init__(self, pipe, batch_invariant: bool):
        from pipeline.families import family_of_pipe

        self.family = family_of_pipe(pipe)
        self.pipe, self.base_unet, self.batch_invariant = pipe, self.family.denoiser(pipe), batch_invariant
        self.t5 = None

    def use(self, cand: TrainingOutput | None) -> None:
        """Put ``cand``'s weights in (None: the base model as loaded); a candidate trained without T5 samples
        without it (the family's optional T5 set to None, SD3's ``text_encoder_3``: zeros where T5 goes, as its
        latents had)."""
        pipe = self.pipe
        if cand is not None and cand.t5 is False and self.family.optional_t5:
            encoder = self.family.optional_t5[0]
            self.t5 = getattr(pipe, encoder)
            setattr(pipe, encoder, None)
        if cand is not None and cand.kind == "unet":
            self.family.set_denoiser(pipe, load_unet(cand, self.base_unet.dtype).to(pipe.device).eval())
        elif cand is not None:
            load_lora(pipe, cand)
        if self.batch_invariant:
            _patch_batch_invariant(pipe)

    def restore(self, cand: TrainingOutput | None) -> None:
        if cand is None:
            return
        if cand.t5 is False and self.family.optional_t5:
            # back in the pipeline and its config
            self.pipe.register_modules(**{self.family.optional_t5[0]: self.t5})
            self.t5 = None
        if cand.kind == "unet":
            self.family.set_denoiser(self.pipe, self.base_unet)
        else:
            self.pipe.unload_lora_weights()


def _write_png(image, path: Path) -> None:
    with atomic_write(path) as tmp:  # the final name only ever holds a complete image
        image.save(tmp, format="PNG")


def sampling_kwargs(cfg: EvalConfig, cand: TrainingOutput | None) -> dict:
    """Pipeline-call settings of one model: a candidate's as it was trained (its T5 token count), the base's
    ``--base-max-sequence-length`` when given, else none (the pipeline's defaults)."""
    if cand is not None:
        return cand.sampling_kwargs()
    return {"max_sequence_length": cfg.base_max_sequence_length} if cfg.base_max_sequence_length else {}


def generate_missing(cfg: EvalConfig, base_model: str, models: list[tuple[str, TrainingOutput | None]],
                      prompt_set: PromptSet, out: Path) -> int:
    """Generate every image of ``models`` x prompts x ``cfg.seeds`` not yet in ``out`` (one base pipeline loaded
    only when there is one to make); returns how many were made."""
    from pipeline.models.conditioning import report_truncation
    from pipeline.models.loading import load_pipeline, resolve_device, resolve_dtype
    from stages.generate import generate_images
    from stages.recipes import ImageRequest

    work = {
        name: [ImageKey(name, p.id, k) for p in prompt_set.prompts for k in range(cfg.seeds)
               if not (out / ImageKey(name, p.id, k).relpath()).is_file()]
        for name, _ in models
    }
    total = sum(len(v) for v in work.values())
    if not total:
        return 0
    text = {p.id: p.text for p in prompt_set.prompts}
    device = resolve_device(cfg.device)
    pipe = load_pipeline(base_model, vae=cfg.vae, dtype=resolve_dtype(cfg.dtype, device), device=device)
    switch = ModelSwitch(pipe, cfg.batch_invariant)
    bar = progress_bar(total=total, desc="eval: generate", unit="img")
    for name, cand in models:
        todo = work[name]
        if not todo:
            continue
        switch.use(cand)
        try:
            for b in range(0, len(todo), cfg.batch_size):
                keys = todo[b : b + cfg.batch_size]
                requests = [ImageRequest(text[k.prompt_id], cfg.negative_prompt, k.seed_index) for k in keys]
                seeds = [derive_seed(cfg.seed, k.prompt_id, k.seed_index) for k in keys]
                images = generate_images(pipe, requests, seeds, cfg, **sampling_kwargs(cfg, cand))
                for key, image in zip(keys, images):
                    _write_png(image, out / key.relpath())
                bar.update(len(keys))
        finally:
            switch.restore(cand)
    bar.close()
    report_truncation("eval")
    return total



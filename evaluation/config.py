"""``mapo-eval``'s options (:class:`EvalConfig`, declared once, :mod:`pipeline.cli.options`), its result, the
output folder's file names and the key of one image (:class:`ImageKey`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.cli.options import (
    PANEL_IO,
    PANEL_RUN,
    PANEL_SAMPLING,
    at_least,
    batch_invariant_option,
    builtin_models_help,
    check_options,
    dtype_option,
    guidance_scale_option,
    model_option,
    num_inference_steps_option,
    option,
    prompt_column_option,
    prompt_split_option,
    resolution_option,
    seed_option,
    vae_option,
)
from pipeline.judges.options import JudgeOptions
from pipeline.judges.registry import check_judges

EVAL_CONFIG = "eval_config.json"
SCORES = "scores.parquet"
# What mapo-eval writes in its --output (all that --overwrite removes).
OWNED = (EVAL_CONFIG, SCORES, "images", "plots", "grids", "summary.json", "report.html")
BASE = "base"
DEFAULT_METRICS = ("aesthetic", "hps", "pickscore", "clip")
# Lower is better only for unsafety; every other metric rewards higher scores.
SCORE_CHUNK = 64  # images scored between two saves of scores.parquet


@dataclass
class EvalConfig:
    """``mapo-eval``: every option, declared once (:mod:`pipeline.cli.options`); the sampling defaults are the
    paper's validation settings (25 steps, guidance 5.0; method.md, Evaluation)."""

    prompts: str = option(panel=PANEL_IO, help=(
        "Prompt source: .txt, .jsonl/.csv/.parquet (caption column), or a datasets name."))
    output: str = option(panel=PANEL_IO, help=(
        "Output folder (images, scores.parquet, summary.json, plots, report.html); resumable."))
    candidates: list[str] = option(name="candidate", default_factory=list, separator=None, panel=PANEL_IO, help=(
        "A mapo-train output folder (full fine-tune: unet/, SD3: transformer/; or LoRA); repeat to compare several."))
    # None: the candidates' base model (training_config.json "model")
    model: str | None = model_option(None, help=(
        f"Base model: hub id, local diffusers folder, or built-in ({builtin_models_help()}); "
        "default: the candidates' training model."))
    metrics: list[str] = option(default_factory=lambda: list(DEFAULT_METRICS), panel=PANEL_IO, help=(
        "Comma-separated: aesthetic, hps, pickscore, clip, style, safety; on the miniature world world-style, "
        "world-prompt, world-unsafe."))
    judges: JudgeOptions = field(default_factory=JudgeOptions)
    vae: str | None = vae_option()
    dtype: str = dtype_option()
    device: str = option("auto", panel=PANEL_RUN, help="auto, cpu, cuda, cuda:N (generation and scoring).")
    num_inference_steps: int = num_inference_steps_option(25)
    guidance_scale: float = guidance_scale_option(5.0)
    # None: the candidates' training resolution, else the base model's own
    resolution: int | None = resolution_option(help=(
        "Image side in pixels (a multiple of the model family's: 8 for SD1.5/SDXL, 16 for SD3 and Flux); default: the "
        "resolution the candidates were trained at, else the base model's own "
        "(1024 for SDXL, 512 for SD1.5, 64 for the built-in models)."))
    base_max_sequence_length: int | None = option(None, check=at_least(1), panel=PANEL_SAMPLING, help=(
        "T5 token rows the base model samples with (models with a T5 encoder, SD3 and Flux; at most 512); default "
        "the pipeline's (SD3 256, Flux 512). Candidates always sample with the count they were trained on: pass "
        "theirs to give the base the same text conditioning."))
    seeds: int = option(1, check=at_least(1), panel=PANEL_SAMPLING, help=(
        "Images (seeds) per prompt; every model gets the same seeds."))
    seed: int = seed_option("Global seed; image k of a prompt uses derive_seed(seed, prompt id, k).")
    negative_prompt: str | None = option(None, panel=PANEL_SAMPLING, help="Negative prompt for every image.")
    batch_size: int = option(4, check=at_least(1), panel=PANEL_RUN, help="Images per pipeline call.")
    batch_invariant: bool = batch_invariant_option()
    prompt_column: str | None = prompt_column_option()
    prompt_split: str = prompt_split_option()
    limit: int | None = option(None, check=at_least(1), panel=PANEL_IO, help="Use only the first N prompts.")
    grid_prompts: int = option(8, check=at_least(0), panel=PANEL_IO, help=(
        "Prompts shown as image grids (base | candidates) in the report."))
    overwrite: bool = option(
        False, panel=PANEL_IO, help="Replace an output folder made with other generation settings."
    )

    def validate(self) -> "EvalConfig":
        """The declared checks; metric names deduplicated; the judges' style texts and tiny weights resolved.

        Raises:
            UserError: a value outside its choices or range, no metric.
        """
        check_options(self)
        self.metrics = check_judges(self.metrics)
        self.judges = self.judges.resolved()
        return self

    def generation(self, base_model: str) -> dict:
        """What decides the image bytes: a rerun with other values is refused."""
        from pipeline.models.loading import dtype_name, resolve_device, resolve_dtype

        dtype = dtype_name(resolve_dtype(self.dtype, resolve_device(self.device)))  # "auto" differs per device
        return {"model": base_model, "vae": self.vae, "dtype": dtype, "num_inference_steps": self.num_inference_steps,
                "guidance_scale": self.guidance_scale, "resolution": self.resolution, "seed": self.seed,
                "negative_prompt": self.negative_prompt, "batch_invariant": self.batch_invariant}


@dataclass
class EvalResult:
    output: str
    images_generated: int
    scores_computed: int
    report: str
    summary: dict
    seconds: float


@dataclass(frozen=True)
class ImageKey:
    model: str
    prompt_id: str
    seed_index: int

    def relpath(self) -> str:
        return f"images/{self.model}/{self.prompt_id}-{self.seed_index}.png"


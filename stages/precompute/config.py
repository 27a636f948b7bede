"""``mapo-data precompute``'s options (:class:`PrecomputeConfig`, declared once, :mod:`pipeline.cli.options`) and
its result (:class:`PrecomputeResult`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.cli.options import (
    DTYPES,
    PANEL_IO,
    PANEL_MODEL,
    PANEL_RUN,
    at_least,
    check_options,
    device_option,
    dtype_option,
    model_option,
    multiple_of_8,
    option,
    overwrite_option,
    split_option,
    vae_option,
)
from pipeline.data.image_prep import CROPS
from pipeline.data.latent_shards import STORAGE_DTYPES
from pipeline.data.layouts import LayoutOptions
from pipeline.models.loading import DEFAULT_MODEL

FLIPS = ("none", "both")
PANEL_PREP = "Image preparation and storage"


@dataclass
class PrecomputeConfig:
    """``mapo-data precompute``: every option, declared once (:mod:`pipeline.cli.options`)."""

    input: str = option(flags=("--input",), panel=PANEL_IO, help=(
        "Preference shards: a folder (data/*.parquet), a Parquet file or a glob, with caption, jpg_0, jpg_1, "
        "label_0, label_1; or unpaired examples (for --objective kto) with caption, jpg, label (1 desirable, "
        "0 undesirable)."))
    output: str = option(panel=PANEL_IO, help="Output folder for the latent shards (resumable).")
    model: str = model_option(DEFAULT_MODEL)
    vae: str | None = vae_option()
    dtype: str = dtype_option("Text encoders: auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16.")
    # SDXL's own VAE overflows in fp16; pass fp16 with an fp16-fix --vae.
    vae_dtype: str = option("fp32", choices=DTYPES, panel=PANEL_MODEL, help=(
        "VAE precision (SDXL's own VAE overflows in fp16; fp16 is fine with an fp16-fix --vae)."))
    device: str = device_option()
    resolution: int | None = option(None, check=multiple_of_8, panel=PANEL_PREP, help=(
        "Training resolution (a multiple of 8; 16 for SD3 and Flux): short side resized to it, then a square crop; "
        "default: the model's own (1024 for SDXL, 512 for SD1.5, 64 for the built-in models)."))
    crop: str = option(
        "center", choices=CROPS, panel=PANEL_PREP, help="center, or random (seeded per pair from --seed)."
    )
    seed: int = option(0, panel=PANEL_PREP, help="Seed for --crop random.")
    flip: str = option("none", choices=FLIPS, panel=PANEL_PREP,
                       help="none, or both: also cache the mirrored latents so training can flip.")
    latent_stats: bool = option(False, flags=("--latent-stats",), panel=PANEL_PREP,
                                help="Also keep the latent log-variance (training can sample).")
    storage_dtype: str = option("fp16", choices=STORAGE_DTYPES, panel=PANEL_PREP,
                                help="fp16 or bf16 for stored latents and embeddings.")
    max_sequence_length: int | None = option(None, check=at_least(1), panel=PANEL_MODEL, help=(
        "SD3, Flux: T5 tokens stored per caption, at most 512 (the pipeline's limit); default: the pipeline's own "
        "(SD3 256, Flux 512). Each token costs joint_attention_dim x 2 bytes (8 KiB for SD3.5 and Flux.1)."))
    t5: bool = option(True, flags=("--t5/--no-t5",), panel=PANEL_MODEL, help=(
        "SD3: run the T5 text encoder (default), or store zeros in its place as StableDiffusion3Pipeline "
        "does with text_encoder_3=None (saves T5's ~9 GB of memory; train and sample the same way)."))
    # 1024 px images are memory-hungry: 2 (x2 with flips) images per pair.
    batch_size: int = option(4, check=at_least(1), panel=PANEL_RUN,
                             help="Pairs per VAE call (and captions per text-encoder call).")
    overwrite: bool = overwrite_option()
    split: str = split_option()
    layout: LayoutOptions = field(default_factory=LayoutOptions)

    def validate(self) -> "PrecomputeConfig":
        """The declared checks.

        Raises:
            UserError: a value outside its choices or range.
        """
        check_options(self)
        return self


@dataclass
class PrecomputeResult:
    output: str
    pairs_written: int
    shards_written: int
    shards_skipped: int
    ties: int
    rejects: int
    captions_encoded: int
    latent_bytes: int  # bytes of latent arrays written by this process
    seconds: float
    loop_seconds: float
    shape: str = "pairs"  # or "unpaired": then pairs_written counts examples
    desirable: int = 0  # unpaired examples labelled 1

    @property
    def pairs_per_second(self) -> float:
        return self.pairs_written / self.loop_seconds if self.loop_seconds else 0.0

    @property
    def bytes_per_pair(self) -> float:
        return self.latent_bytes / self.pairs_written if self.pairs_written else 0.0


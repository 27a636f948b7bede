"""What a benchmark run measures: the configurations, the model presets and the run's settings."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from pipeline.errors import UserError


@dataclass(frozen=True)
class Configuration:
    """One training setup to time: an objective, full fine-tune or LoRA, precomputed or in-step encoding."""

    name: str
    objective: str  # "mapo" | "dpo" | "sft"
    lora: bool = False
    in_step: bool = False  # VAE + text encoders run inside the step (upstream trainers) instead of precomputed
    label: str = ""


CONFIGURATIONS = {c.name: c for c in (
    Configuration("mapo", "mapo", label="MaPO, full UNet"),
    Configuration("dpo", "dpo", label="Diffusion-DPO, full UNet + frozen reference UNet"),
    Configuration("sft", "sft", label="SFT on chosen images, full UNet"),
    Configuration("mapo-lora", "mapo", lora=True, label="MaPO, LoRA"),
    Configuration("dpo-lora", "dpo", lora=True, label="Diffusion-DPO, LoRA (reference = adapter disabled)"),
    Configuration("mapo-instep", "mapo", in_step=True, label="MaPO, VAE + text encoders inside the step"),
)}
DEFAULT_CONFIGURATIONS = tuple(CONFIGURATIONS)
MAX_BATCH_CONFIGURATIONS = ("mapo", "dpo")  # the paper's "fits a larger batch" claim


@dataclass(frozen=True)
class Preset:
    resolution: int
    batch_size: int
    dtype: str  # mixed precision of the step: fp32 (no autocast), bf16, fp16
    steps: int
    warmup: int
    gradient_checkpointing: bool


# tiny-sdxl: a CI-sized CPU run. sdxl-arch: SDXL base's real architecture at 1024 px in bf16,
# with gradient checkpointing as the upstream SDXL DPO/MaPO recipes train it.
PRESETS = {
    "tiny-sdxl": Preset(resolution=64, batch_size=2, dtype="fp32", steps=15, warmup=3, gradient_checkpointing=False),
    "tiny-sd15": Preset(resolution=64, batch_size=2, dtype="fp32", steps=15, warmup=3, gradient_checkpointing=False),
    "sdxl-arch": Preset(resolution=1024, batch_size=1, dtype="bf16", steps=10, warmup=3, gradient_checkpointing=True),
}
DEFAULT_PRESET = Preset(resolution=1024, batch_size=1, dtype="bf16", steps=10, warmup=3, gradient_checkpointing=True)


@dataclass
class BenchConfig:
    model: str = "tiny-sdxl"
    device: str = "auto"
    resolution: int | None = None  # None: the model preset's
    batch_size: int | None = None
    dtype: str | None = None
    steps: int | None = None
    warmup: int | None = None
    gradient_checkpointing: bool | None = None
    configurations: list[str] = field(default_factory=lambda: list(DEFAULT_CONFIGURATIONS))
    lora_rank: int = 8
    pairs: int | None = None  # distinct synthetic pairs; None: 4 batches' worth
    max_batch: bool = True  # GPU only; skipped (null) on the CPU
    max_batch_limit: int = 256
    peak_tflops: float | None = None  # None: from the device table (bf16 dense)
    seed: int = 0
    output: str | None = None
    worker_timeout_s: int = 1800

    def resolved(self) -> BenchConfig:
        """Fill unset fields from the model's preset and check the values."""
        preset = PRESETS.get(self.model, DEFAULT_PRESET)
        out = BenchConfig(**asdict(self))
        for name in ("resolution", "batch_size", "dtype", "steps", "warmup", "gradient_checkpointing"):
            if getattr(out, name) is None:
                setattr(out, name, getattr(preset, name))
        if out.pairs is None:
            out.pairs = 4 * out.batch_size
        unknown = [c for c in out.configurations if c not in CONFIGURATIONS]
        if unknown or not out.configurations:
            raise UserError(f"Unknown configuration(s) {', '.join(unknown) or '(none given)'}; "
                            f"choose from {', '.join(CONFIGURATIONS)}.")
        if out.dtype not in ("fp32", "bf16"):
            raise UserError(f"Unknown --dtype '{out.dtype}'; choose fp32 or bf16 (fp16 would need a gradient scaler).")
        if out.resolution < 8 or out.resolution % 8:
            raise UserError("--resolution must be a positive multiple of 8.")
        for name in ("batch_size", "steps", "pairs", "max_batch_limit"):
            if getattr(out, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1.")
        if out.warmup < 0 or out.lora_rank < 1:
            raise UserError("--warmup must be >= 0 and --lora-rank >= 1.")
        if out.peak_tflops is not None and out.peak_tflops <= 0:
            raise UserError("--peak-tflops must be > 0.")
        return out

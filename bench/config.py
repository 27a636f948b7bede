"""What a benchmark run measures: the configurations, the model presets and the run's settings."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from pipeline.cli.options import option
from pipeline.errors import UserError


@dataclass(frozen=True)
class Configuration:
    """One training setup to time: an objective, full fine-tune or LoRA, precomputed or in-step encoding."""

    name: str
    objective: str  # "mapo" | "dpo" | "sft"
    lora: bool = False
    in_step: bool = False  # VAE + text encoders run inside the step (upstream trainers) instead of precomputed
    label: str = ""
    options: tuple = ()  # (TrainConfig field, value) pairs: the memory options (docs/benchmarks.md "Memory options")


CONFIGURATIONS = {c.name: c for c in (
    Configuration("mapo", "mapo", label="MaPO, full UNet"),
    Configuration("dpo", "dpo", label="Diffusion-DPO, full UNet + frozen reference UNet"),
    Configuration("sft", "sft", label="SFT on chosen images, full UNet"),
    Configuration("mapo-lora", "mapo", lora=True, label="MaPO, LoRA"),
    Configuration("dpo-lora", "dpo", lora=True, label="Diffusion-DPO, LoRA (reference = adapter disabled)"),
    Configuration("mapo-instep", "mapo", in_step=True, label="MaPO, VAE + text encoders inside the step"),
)}
DEFAULT_CONFIGURATIONS = tuple(CONFIGURATIONS)
# Memory options (train/optimizers.py, train/offload.py): not in the default run (8-bit AdamW needs
# bitsandbytes and CUDA; --estimate stands in for it, see bench/fake.py).
_IN_BWD, _BF16 = ("optimizer_in_backward", True), ("master_weights", "bf16")
_8BIT = ("use_8bit_adam", True)
CONFIGURATIONS.update({c.name: c for c in (
    Configuration("mapo-8bit", "mapo", options=(_8BIT,), label="MaPO, full, 8-bit AdamW"),
    Configuration("mapo-inbwd", "mapo", options=(_IN_BWD,), label="MaPO, full, optimizer in backward"),
    Configuration("mapo-bf16", "mapo", options=(_BF16,), label="MaPO, full, bf16 weights + moments (SR)"),
    Configuration("mapo-inbwd-8bit", "mapo", options=(_IN_BWD, _8BIT), label="MaPO, full, in backward + 8-bit AdamW"),
    Configuration("mapo-inbwd-bf16", "mapo", options=(_IN_BWD, _BF16), label="MaPO, full, in backward + bf16 (SR)"),
    Configuration("dpo-bf16ref", "dpo", options=(("reference_dtype", "bf16"),), label="DPO, full, bf16 reference"),
    Configuration("dpo-cpuref", "dpo", options=(("reference_device", "cpu"),), label="DPO, full, reference on CPU"),
    Configuration("dpo-inbwd-bf16", "dpo", options=(_IN_BWD, _BF16),
                  label="DPO, full, in backward + bf16 (SR), bf16 reference"),
    Configuration("dpo-inbwd-bf16-cpuref", "dpo", options=(_IN_BWD, _BF16, ("reference_device", "cpu")),
                  label="DPO, full, in backward + bf16 (SR), bf16 reference on CPU"),
)})
# Speed options (issue: LoRA and SFT slower than MaPO at small batches on a GPU, launch-bound): not in the default run.
_COMPILE = ("compile", True)
CONFIGURATIONS.update({c.name: c for c in (
    Configuration("mapo-compile", "mapo", options=(_COMPILE,), label="MaPO, full, compiled transformer blocks"),
    Configuration("sft-compile", "sft", options=(_COMPILE,), label="SFT, full, compiled transformer blocks"),
    Configuration("mapo-lora-compile", "mapo", lora=True, options=(_COMPILE,), label="MaPO, LoRA, compiled blocks"),
    Configuration("dpo-lora-compile", "dpo", lora=True, options=(_COMPILE,), label="DPO, LoRA, compiled blocks"),
)})
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
    "tiny-sd3": Preset(resolution=64, batch_size=2, dtype="fp32", steps=15, warmup=3, gradient_checkpointing=False),
    "tiny-flux": Preset(resolution=64, batch_size=2, dtype="fp32", steps=15, warmup=3, gradient_checkpointing=False),
    "sdxl-arch": Preset(resolution=1024, batch_size=1, dtype="bf16", steps=10, warmup=3, gradient_checkpointing=True),
    # SD3.5 at its default 1024 px (128x128x16 latents); gradient checkpointing as diffusers' SD3 trainers offer it.
    "sd35-medium-arch": Preset(resolution=1024, batch_size=1, dtype="bf16", steps=10, warmup=3,
                               gradient_checkpointing=True),
    "sd35-large-arch": Preset(resolution=1024, batch_size=1, dtype="bf16", steps=10, warmup=3,
                              gradient_checkpointing=True),
    # FLUX.1-dev at FluxPipeline's default 1024 px (128x128x16 latents, 4096 image tokens); gradient checkpointing as
    # diffusers' train_dreambooth_(lora_)flux.py offer it.
    "flux-dev-arch": Preset(resolution=1024, batch_size=1, dtype="bf16", steps=10, warmup=3,
                            gradient_checkpointing=True),
}
DEFAULT_PRESET = Preset(resolution=1024, batch_size=1, dtype="bf16", steps=10, warmup=3, gradient_checkpointing=True)


def _gpu_memory_check(value) -> str | None:
    return None if value > 0 else "must be > 0 (GB of each card)"


@dataclass
class BenchConfig:
    """``python -m bench train``'s options (each declared once: pipeline.cli.options)."""

    model: str = option("tiny-sdxl", help="tiny-sdxl (CPU, CI-sized), sdxl-arch, sd35-medium-arch, "
                                          "sd35-large-arch, flux-dev-arch (GPU or --estimate: 1024 px, bf16), or any "
                                          "model id/folder.")
    device: str = option("auto", help="auto, cpu, cuda, cuda:N.")
    resolution: int | None = option(None, help="Image size in px (default: the model preset's).")
    batch_size: int | None = option(None, help="Pairs per step (default: the model preset's).")
    dtype: str | None = option(None, help="fp32 or bf16 (mixed precision, autocast; default: the preset's).")
    steps: int | None = option(None, help="Timed steps per configuration (median reported).")
    warmup: int | None = option(None, help="Untimed steps first.")
    gradient_checkpointing: bool | None = option(None, help="Default: the preset's (on for sdxl-arch).",
                                                 flags=("--gradient-checkpointing/--no-gradient-checkpointing",))
    configurations: list[str] = option(default_factory=lambda: list(DEFAULT_CONFIGURATIONS),
                                       help="Comma-separated subset of: " + ", ".join(CONFIGURATIONS) + ".")
    lora_rank: int = option(8, help="Rank of the LoRA configurations.")
    pairs: int | None = option(None, help="Distinct pairs of data (default: 4 batches).")  # None: 4 batches' worth
    max_batch: bool = option(True, help="Search the largest batch for mapo and dpo (GPU only).",
                             flags=("--max-batch/--no-max-batch",))  # skipped (null) on the CPU
    max_batch_limit: int = option(256, help="Stop the search at this batch.")
    max_batch_configurations: list[str] = option(default_factory=lambda: list(MAX_BATCH_CONFIGURATIONS), help=(
        "Comma-separated configurations (of those run) whose largest batch is searched."))
    max_batch_gpu_memory: float | None = option(None, check=_gpu_memory_check, help=(
        "Search the largest batch as if the GPU had this many GB (read as GiB), e.g. 80 on an H200 for the MaPO "
        "paper's 80 GB card (torch.cuda.set_per_process_memory_fraction; default: the whole GPU)."))
    peak_tflops: float | None = option(None, help="Device peak TFLOP/s for MFU (default: bf16 dense peak of known "
                                                  "GPUs).")
    output: str | None = option(None, help=(
        "Where to write the JSON result (default: bench-output/bench.json, or bench-output/estimate.json with "
        "--estimate)."))
    seed: int = option(0, help="Seed of the data, noise and timesteps.")
    estimate: bool = option(False, help="Estimate peak memory (weights / gradients / optimizer / activations), "
                                        "FLOPs and the largest batch per card on fake tensors, on the CPU, allocating "
                                        "nothing.")
    gpu_memory: list[float] = option(default_factory=lambda: [24.0, 48.0, 80.0, 141.0], check=_gpu_memory_check,
                                     help="With --estimate: card sizes in GB (read as GiB) to fit the largest batch "
                                          "in.")
    engine: str = option("single", choices=("single", "ddp", "fsdp2"), help=(
        "With --estimate: the engine mapo-train runs (single, ddp, fsdp2); memory is per GPU (bench/engines.py)."))
    num_processes: int = option(1, help="With --estimate: the number of GPUs (processes) --engine runs on.")
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
        if out.output is None:  # an estimate does not overwrite a measurement
            out.output = "bench-output/estimate.json" if out.estimate else "bench-output/bench.json"
        unknown = [c for c in (*out.configurations, *out.max_batch_configurations) if c not in CONFIGURATIONS]
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
        if out.num_processes < 1 or (out.engine == "single") != (out.num_processes == 1):
            raise UserError("--engine single runs 1 process, ddp and fsdp2 2 or more: set --num-processes to match.")
        if out.peak_tflops is not None and out.peak_tflops <= 0:
            raise UserError("--peak-tflops must be > 0.")
        return out

"""``mapo-train``: parse options into a :class:`TrainConfig` (YAML < command line) and run the recipe."""
from __future__ import annotations

from typing import List, Optional

import typer

from pipeline.cli_support import signal_exit_code, user_errors_exit
from pipeline.models import DEFAULT_MODEL

app = typer.Typer(
    help="Train a diffusion model on precomputed preference shards with MaPO (or DPO / SFT baselines).",
    add_completion=False,
    pretty_exceptions_enable=False,
)

_LIST_OPTIONS = {"lora_target_modules", "validation_seeds", "validation_metrics"}  # comma-separated on the command line


@app.command()
@user_errors_exit
def main(
    ctx: typer.Context,
    data: Optional[str] = typer.Option(None, help="Latent folder written by `mapo-data precompute` (required)."),
    model: str = typer.Option(DEFAULT_MODEL, help="Base model the latents were made with: hub id, local diffusers folder, tiny-sdxl, tiny-sd15, shapes-sdxl."),
    output_dir: str = typer.Option("runs/mapo", help="Where checkpoints, logs, the trained UNet / LoRA and the model card go."),
    config: Optional[str] = typer.Option(None, help="YAML file of options (same names); options given here win."),
    objective: str = typer.Option("mapo", help="mapo (reference-free), dpo (Diffusion-DPO) or sft (chosen images only)."),
    beta: Optional[float] = typer.Option(None, help="Preference strength: default 0.1 for mapo, 5000 for dpo."),
    max_steps: Optional[int] = typer.Option(None, help="Optimizer steps (default: --num-epochs over the data)."),
    num_epochs: int = typer.Option(1, help="Epochs when --max-steps is not given."),
    batch_size: int = typer.Option(4, help="Pairs per process per micro-batch."),
    gradient_accumulation_steps: int = typer.Option(1, help="Micro-batches per optimizer step."),
    learning_rate: float = typer.Option(1e-5, help="Peak learning rate."),
    lr_scheduler: str = typer.Option("constant", help="constant, linear, cosine, cosine_with_restarts, polynomial, constant_with_warmup."),
    lr_warmup_steps: int = typer.Option(0, help="Linear warmup steps."),
    adam_weight_decay: float = typer.Option(1e-2, help="AdamW weight decay."),
    max_grad_norm: float = typer.Option(1.0, help="Gradient clipping norm."),
    use_8bit_adam: bool = typer.Option(False, help="bitsandbytes' 8-bit AdamW (CUDA; needs bitsandbytes)."),
    lora_rank: int = typer.Option(0, help="LoRA rank; 0 = full UNet fine-tune."),
    lora_alpha: Optional[float] = typer.Option(None, help="LoRA alpha (default: the rank)."),
    lora_target_modules: str = typer.Option("to_k,to_q,to_v,to_out.0", help="Comma-separated UNet modules that get LoRA."),
    gradient_checkpointing: bool = typer.Option(False, help="Trade compute for memory in the UNet."),
    mixed_precision: str = typer.Option("no", help="no, fp16 (CUDA) or bf16."),
    random_flip: bool = typer.Option(False, help="Use mirrored latents half of the time (needs precompute --flip both)."),
    checkpointing_steps: int = typer.Option(500, help="Save a resumable checkpoint every N steps."),
    checkpoints_total_limit: Optional[int] = typer.Option(3, help="Keep only the newest N checkpoints."),
    resume_from_checkpoint: Optional[str] = typer.Option(None, help="'latest' or a checkpoint-<step> folder."),
    overwrite: bool = typer.Option(False, help="Start over in an output dir that holds another run."),
    max_consecutive_nonfinite: int = typer.Option(10, help="Stop after this many non-finite losses in a row."),
    seed: int = typer.Option(0, help="Seed for data order, noise and timesteps."),
    validation_steps: int = typer.Option(0, help="Validation images every N steps (0: only before and after training)."),
    validation_prompts: Optional[List[str]] = typer.Option(None, help="Validation prompt (repeat the option for several)."),
    validation_seeds: str = typer.Option("0,1", help="Comma-separated seeds, one image per prompt and seed."),
    validation_inference_steps: int = typer.Option(25, help="Denoising steps for validation images."),
    validation_guidance_scale: float = typer.Option(5.0, help="Guidance scale for validation images."),
    validation_resolution: Optional[int] = typer.Option(None, help="Validation image side (default: the data's resolution)."),
    validation_metrics: str = typer.Option("", help="Comma-separated scores of the validation images, logged as val/<metric>: aesthetic, hps, pickscore, clip, style, safety, world-style, world-prompt, world-unsafe (default: none)."),
    validation_tiny_scorers: bool = typer.Option(False, help="Score with tiny random scorer weights built offline (tests, demo)."),
    validation_style: Optional[str] = typer.Option(None, help="cartoon or pixel: the style the style and world-style metrics check."),
    validation_style_text: Optional[str] = typer.Option(None, help="Text of the style for the 'style' metric (instead of --validation-style)."),
    report_to: str = typer.Option("auto", help="auto (tensorboard when installed), tensorboard, wandb, all, none."),
    logging_steps: int = typer.Option(1, help="Log metrics every N steps."),
    debug_weight_checksums: bool = typer.Option(False, hidden=True, help="Write a per-rank weight checksum per step."),
):
    """Train with MaPO, Diffusion-DPO or SFT on latents from `mapo-data precompute`."""
    from .config import build_config, split_list
    from .trainer import run_train

    given = {}
    for name, value in ctx.params.items():
        source = ctx.get_parameter_source(name)
        # By name: typer may ship its own copy of click's ParameterSource enum.
        if name == "config" or getattr(source, "name", None) != "COMMANDLINE":
            continue
        if name in _LIST_OPTIONS:
            value = split_list(value)
        given[name] = value
    cfg = build_config(given, config)
    result = run_train(cfg)
    if result.stopped_by_signal:
        typer.echo(f"mapo-train: stopped by {result.stopped_by_signal} at step {result.steps}; "
                   f"checkpoint saved, rerun with --resume-from-checkpoint latest")
        raise typer.Exit(signal_exit_code(result.stopped_by_signal))  # not 0: the run is unfinished
    m = result.final_metrics
    summary = ", ".join(f"{k} {m[k]:.4g}" for k in ("loss", "e_w", "e_l", "implicit_acc") if k in m)
    typer.echo(f"mapo-train: {result.steps - result.start_step} steps ({result.start_step} -> {result.steps}) "
               f"in {result.seconds:.1f}s; {summary}; non-finite skipped {result.nonfinite_skipped}; "
               f"saved {result.saved}")


if __name__ == "__main__":  # pragma: no cover
    app()

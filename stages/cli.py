"""``mapo-data``: the data stages. Parses options into a config and calls the stage."""
from __future__ import annotations

from typing import Optional

import typer

from pipeline.cli_support import user_errors_exit
from pipeline.models import DEFAULT_MODEL

app = typer.Typer(
    help="Build MaPO preference data: generate pairs, label them, precompute latents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _group():
    """Build MaPO preference data: generate pairs, label them, precompute latents."""


MODEL_HELP = "Hub id, local diffusers folder, or built-in: tiny-sdxl, tiny-sd15, sdxl-arch."


@app.command()
@user_errors_exit
def generate(
    prompts: str = typer.Option(..., help="Prompt source: .txt (one per line), .jsonl/.csv/.parquet, or a datasets name."),
    output: str = typer.Option(..., help="Output folder for the pair shards (resumable)."),
    recipe: str = typer.Option("style", help="Pair recipe: style, safety or seeds."),
    style: str = typer.Option("cartoon", help="Built-in style for --recipe style: cartoon or pixel."),
    style_prefix: Optional[str] = typer.Option(None, help="Custom style prefix (overrides --style)."),
    rejected_prefix: Optional[str] = typer.Option(None, help="Style recipe: prefix of the rejected image's prompt (default: the plain prompt), e.g. 'Realistic 8k image.'."),
    unsafe_prefix: Optional[str] = typer.Option(None, help="Safety recipe: prefix of the second image's prompt."),
    negative_prompt: Optional[str] = typer.Option(None, help="Negative prompt for image 0 (the intended chosen image)."),
    rejected_negative_prompt: Optional[str] = typer.Option(None, help="Negative prompt for image 1."),
    distinct_seeds: bool = typer.Option(False, help="Style/safety: give the two images different seeds (default: the same seed)."),
    model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
    vae: Optional[str] = typer.Option(None, help="Override VAE (hub id or folder), e.g. madebyollin/sdxl-vae-fp16-fix."),
    dtype: str = typer.Option("auto", help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    num_inference_steps: int = typer.Option(30, help="Denoising steps per image."),
    guidance_scale: float = typer.Option(5.0, help="Classifier-free guidance scale."),
    resolution: int = typer.Option(1024, help="Image side in pixels (multiple of 8)."),
    seed: int = typer.Option(0, help="Global seed; each image's seed derives from (seed, prompt id, image index)."),
    shard_size: int = typer.Option(100, help="Pairs per Parquet shard."),
    batch_size: int = typer.Option(4, help="Pairs per pipeline call."),
    image_format: str = typer.Option("png", help="png (lossless), jpeg or webp."),
    quality: int = typer.Option(95, help="JPEG/WebP quality."),
    prompt_column: Optional[str] = typer.Option(None, help="Column holding prompts (default: caption, else prompt)."),
    prompt_split: str = typer.Option("train", help="Split, when --prompts is a datasets name."),
    keep_duplicates: bool = typer.Option(False, help="Keep duplicate prompts (dropped by default)."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N usable prompts."),
    batch_invariant: bool = typer.Option(True, help="Bit-identical images whatever --batch-size (runs the UNet per sample); --no-batch-invariant batches for speed."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the UNet (CUDA only)."),
    overwrite: bool = typer.Option(False, help="Replace an output folder made with another configuration."),
):
    """Generate image pairs from prompts with a text-to-image model, as Parquet shards."""
    from .generate import GenerateConfig, run_generate
    from .recipes import DEFAULT_UNSAFE_PREFIX, RecipeConfig

    recipe_cfg = RecipeConfig(
        name=recipe, style=style, style_prefix=style_prefix, rejected_prefix=rejected_prefix,
        unsafe_prefix=unsafe_prefix if unsafe_prefix is not None else DEFAULT_UNSAFE_PREFIX,
        negative_prompt=negative_prompt, rejected_negative_prompt=rejected_negative_prompt,
        same_seed=not distinct_seeds,
    )
    cfg = GenerateConfig(
        prompts=prompts, output=output, recipe=recipe_cfg, model=model, vae=vae, dtype=dtype, device=device,
        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, resolution=resolution, seed=seed,
        shard_size=shard_size, batch_size=batch_size, image_format=image_format, quality=quality,
        prompt_column=prompt_column, prompt_split=prompt_split, keep_duplicates=keep_duplicates, limit=limit,
        batch_invariant=batch_invariant, compile=compile, overwrite=overwrite,
    )
    result = run_generate(cfg)
    typer.echo(
        f"generate: {result.pairs_written} pairs in {result.shards_written} shards "
        f"({result.shards_skipped} already done) -> {result.output} | {result.seconds:.1f}s total, "
        f"{result.pairs_per_second:.2f} pairs/s, {100 * result.outside_pipeline_share:.0f}% of generation time outside the pipeline call"
    )


def main():  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

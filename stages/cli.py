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


MODEL_HELP = "Hub id, local diffusers folder, or built-in: tiny-sdxl, tiny-sd15, shapes-sdxl (the miniature world), sdxl-arch."


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
    safety_caption: str = typer.Option("prefixed", help="Safety recipe: the stored caption: 'prefixed' (the unsafe request, so training teaches a safe answer to it) or 'plain' (the context prompt)."),
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
        same_seed=not distinct_seeds, safety_caption=safety_caption,
    )
    cfg = GenerateConfig(
        prompts=prompts, output=output, recipe=recipe_cfg, model=model, vae=vae, dtype=dtype, device=device,
        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, resolution=resolution, seed=seed,
        shard_size=shard_size, batch_size=batch_size, image_format=image_format, quality=quality,
        prompt_column=prompt_column, prompt_split=prompt_split, keep_duplicates=keep_duplicates, limit=limit,
        batch_invariant=batch_invariant, compile=compile, overwrite=overwrite,
    )
    result = run_generate(cfg)
    where = f" process {result.process[0]}/{result.process[1]}:" if result.process[1] > 1 else ""
    typer.echo(
        f"generate:{where} {result.pairs_written} pairs in {result.shards_written} shards "
        f"({result.shards_skipped} already done) -> {result.output} | {result.seconds:.1f}s total, "
        f"{result.pairs_per_second:.2f} pairs/s, {100 * result.outside_pipeline_share:.0f}% of generation time outside the pipeline call"
    )


@app.command()
@user_errors_exit
def label(
    input: str = typer.Option(..., help="Pairs: a generate output folder, or Pick-a-Pic Parquet (file or folder with caption, jpg_0, jpg_1)."),
    output: str = typer.Option(..., help="Output folder for the preference shards, rejects and dataset card (resumable)."),
    target: str = typer.Option(..., help="style (Pick-Style) or safety (Pick-Safety)."),
    labeler: str = typer.Option("auto", help="auto (style: construction, safety: nudenet), construction, nudenet, sd-safety-checker, world-unsafe (the miniature world's judge)."),
    classifier_source: Optional[str] = typer.Option(None, help="Safety classifier weights: NudeNet .onnx file, or SD safety checker hub id / folder."),
    unsafe_threshold: Optional[float] = typer.Option(None, help="Unsafe when the score is above this (default: the classifier's, NudeNet 0.5, SD checker 0.0)."),
    min_gap: float = typer.Option(0.0, help="Safety: drop pairs whose two scores differ by less than this."),
    verify: Optional[str] = typer.Option(None, help="Style: 'clip' (CLIP zero-shot margin) or 'world-style' (the miniature world's judge) drops pairs whose chosen image does not show the style."),
    clip_model: str = typer.Option("ViT-B-32", help="open_clip model name for --verify clip."),
    clip_pretrained: Optional[str] = typer.Option("openai", help="open_clip pretrained tag or local weights file."),
    style_text: Optional[str] = typer.Option(None, help="Text describing the style (default per built-in style, e.g. 'a Disney style animated image')."),
    opposite_text: Optional[str] = typer.Option(None, help="Text describing the opposite (default 'a realistic photo')."),
    min_style_margin: float = typer.Option(0.0, help="Keep a pair when its chosen image's style margin is at least this (clip: cos(style) - cos(opposite); world-style: P(style) - 0.5)."),
    batch_size: int = typer.Option(16, help="Pairs per classifier batch."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    license: str = typer.Option("other", help="License written into the dataset card."),
    overwrite: bool = typer.Option(False, help="Replace an output folder made with another configuration."),
):
    """Label generated pairs into a Pick-a-Pic / MaPO preference dataset with a dataset card."""
    from .label import LabelConfig, run_label
    from .labelers import LabelerSpec

    spec = LabelerSpec(
        target=target, labeler=labeler, classifier_source=classifier_source, unsafe_threshold=unsafe_threshold,
        min_gap=min_gap, verify=verify, clip_model=clip_model, clip_pretrained=clip_pretrained, style_text=style_text,
        opposite_text=opposite_text, min_style_margin=min_style_margin, batch_size=batch_size,
    )
    result = run_label(LabelConfig(input=input, output=output, labeler=spec, device=device, license=license, overwrite=overwrite))
    typer.echo(
        f"label: {result.pairs_in} pairs in {result.shards_written} shards ({result.shards_skipped} already done): "
        f"{result.kept} kept, {result.rejected} rejected, {result.disagreements} disagreed with the recipe -> {result.output} | "
        f"{result.seconds:.1f}s total, {result.pairs_per_second:.2f} pairs/s"
    )


@app.command()
@user_errors_exit
def inspect(
    directory: str = typer.Argument(..., help="A label or generate output folder."),
    html: Optional[str] = typer.Option(None, help="Also write a self-contained HTML page with sampled pairs here."),
    samples: int = typer.Option(24, help="Pairs shown in the HTML page."),
    seed: int = typer.Option(0, help="Sampling seed for the HTML page."),
):
    """Summarise a label or generate output: counts, label balance, drop reasons, score histograms."""
    from .inspect import inspect_output, render_text, write_html

    summary = inspect_output(directory)
    typer.echo(render_text(summary))
    if html:
        path = write_html(directory, html, samples=samples, seed=seed)
        typer.echo(f"inspect: wrote {path}")


@app.command()
@user_errors_exit
def precompute(
    input: str = typer.Option(..., "--input", help="Preference shards: a folder (data/*.parquet), a Parquet file or a glob, with caption, jpg_0, jpg_1, label_0, label_1."),
    output: str = typer.Option(..., help="Output folder for the latent shards (resumable)."),
    model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
    vae: Optional[str] = typer.Option(None, help="Override VAE (hub id or folder), e.g. madebyollin/sdxl-vae-fp16-fix."),
    resolution: int = typer.Option(1024, help="Training resolution: short side resized to it, then a square crop."),
    crop: str = typer.Option("center", help="center, or random (seeded per pair from --seed)."),
    seed: int = typer.Option(0, help="Seed for --crop random."),
    flip: str = typer.Option("none", help="none, or both: also cache the mirrored latents so training can flip."),
    latent_stats: bool = typer.Option(False, "--latent-stats", help="Also keep the latent log-variance (training can sample)."),
    storage_dtype: str = typer.Option("fp16", help="fp16 or bf16 for stored latents and embeddings."),
    dtype: str = typer.Option("auto", help="Text encoders: auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16."),
    vae_dtype: str = typer.Option("fp32", help="VAE precision (SDXL's own VAE overflows in fp16; fp16 is fine with an fp16-fix --vae)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    batch_size: int = typer.Option(4, help="Pairs per VAE call (and captions per text-encoder call)."),
    overwrite: bool = typer.Option(False, help="Replace an output folder made with another configuration."),
):
    """Encode preference pairs into VAE latents + text embeddings for mapo-train (no VAE/text encoders at train time)."""
    from .precompute import PrecomputeConfig, run_precompute

    cfg = PrecomputeConfig(input=input, output=output, model=model, vae=vae, dtype=dtype, vae_dtype=vae_dtype, device=device,
                           resolution=resolution, crop=crop, seed=seed, flip=flip, latent_stats=latent_stats,
                           storage_dtype=storage_dtype, batch_size=batch_size, overwrite=overwrite)
    r = run_precompute(cfg)
    typer.echo(
        f"precompute: {r.pairs_written} pairs in {r.shards_written} shards ({r.shards_skipped} already done), "
        f"{r.ties} ties dropped, {r.rejects} rejected, {r.captions_encoded} captions encoded -> {r.output} | "
        f"{r.seconds:.1f}s total, {r.pairs_per_second:.2f} pairs/s, {r.bytes_per_pair / 1024:.1f} KiB of latents per pair"
    )


def main():  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

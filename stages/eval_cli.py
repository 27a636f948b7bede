"""``mapo-eval``: compare a base model with trained candidates. Parses options and calls the stage."""
from __future__ import annotations

from typing import List, Optional

import typer

from pipeline.cli_support import user_errors_exit

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

MODEL_HELP = "Base model: hub id, local diffusers folder, or built-in (tiny-sdxl, tiny-sd15, shapes-sdxl); default: the candidates' training model."


def _style_texts(style: Optional[str], style_text: Optional[str], opposite_text: Optional[str]) -> tuple[Optional[str], str]:
    """--style names a built-in style with label's zero-shot texts; --style-text / --opposite-text override."""
    from pipeline.errors import UserError

    from pipeline.clip_embed import STYLE_TEXTS

    default = (None, "a realistic photo")
    if style is not None:
        if style not in STYLE_TEXTS:
            raise UserError(f"unknown style '{style}'; choose one of {', '.join(STYLE_TEXTS)} or pass --style-text")
        default = STYLE_TEXTS[style]
    return style_text or default[0], opposite_text or default[1]


@app.command()
@user_errors_exit
def evaluate(
    prompts: str = typer.Option(..., help="Prompt source: .txt, .jsonl/.csv/.parquet (caption column), or a datasets name."),
    output: str = typer.Option(..., help="Output folder (images, scores.parquet, summary.json, plots, report.html); resumable."),
    candidate: List[str] = typer.Option([], help="A mapo-train output folder (full UNet or LoRA); repeat to compare several."),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    metrics: str = typer.Option("aesthetic,hps,pickscore,clip", help="Comma-separated: aesthetic, hps, pickscore, clip, style, safety; on the miniature world world-style, world-prompt, world-unsafe."),
    num_inference_steps: int = typer.Option(25, help="Denoising steps per image (the paper's validation: 25)."),
    guidance_scale: float = typer.Option(5.0, help="Classifier-free guidance scale (the paper's validation: 5.0)."),
    resolution: int = typer.Option(1024, help="Image side in pixels (multiple of 8)."),
    batch_size: int = typer.Option(4, help="Images per pipeline call."),
    seeds: int = typer.Option(1, help="Images (seeds) per prompt; every model gets the same seeds."),
    seed: int = typer.Option(0, help="Global seed; image k of a prompt uses derive_seed(seed, prompt id, k)."),
    negative_prompt: Optional[str] = typer.Option(None, help="Negative prompt for every image."),
    vae: Optional[str] = typer.Option(None, help="Override VAE (hub id or folder)."),
    dtype: str = typer.Option("auto", help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N (generation and scoring)."),
    prompt_column: Optional[str] = typer.Option(None, help="Column holding prompts (default: caption, else prompt)."),
    prompt_split: str = typer.Option("train", help="Split, when --prompts is a datasets name."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N prompts."),
    grid_prompts: int = typer.Option(8, help="Prompts shown as image grids (base | candidates) in the report."),
    batch_invariant: bool = typer.Option(True, help="Same image bits whatever --batch-size (per-sample UNet)."),
    style: Optional[str] = typer.Option(None, help="style / world-style metrics: built-in style (cartoon, pixel); style uses label's zero-shot texts."),
    style_text: Optional[str] = typer.Option(None, help="style metric: text of the target style (overrides --style)."),
    opposite_text: Optional[str] = typer.Option(None, help="style metric: text of its opposite (default 'a realistic photo')."),
    aesthetic_weights: Optional[str] = typer.Option(None, help="Aesthetic MLP .pth: local file, URL or org/repo/file (default: LAION's sac+logos+ava1-l14-linearMSE.pth)."),
    aesthetic_clip_model: str = typer.Option("ViT-L-14", help="open_clip model for the aesthetic embeddings."),
    aesthetic_clip_pretrained: str = typer.Option("openai", help="Its tag or local weights file."),
    hps_weights: Optional[str] = typer.Option(None, help="HPS v2.1 checkpoint: local file or org/repo/file (default xswu/HPSv2/HPS_v2.1_compressed.pt)."),
    hps_clip_model: str = typer.Option("ViT-H-14", help="open_clip model HPS was trained on."),
    pickscore_model: Optional[str] = typer.Option(None, help="PickScore CLIPModel: hub id or folder (default yuvalkirstain/PickScore_v1)."),
    pickscore_processor: Optional[str] = typer.Option(None, help="Its processor (default laion/CLIP-ViT-H-14-laion2B-s32B-b79K)."),
    clip_model: str = typer.Option("ViT-L-14", help="open_clip model for the clip metric."),
    clip_pretrained: str = typer.Option("openai", help="Its tag or local weights file."),
    style_clip_model: str = typer.Option("ViT-B-32", help="open_clip model for the style metric (label --verify clip's default)."),
    style_clip_pretrained: str = typer.Option("openai", help="Its tag or local weights file."),
    safety_classifier: str = typer.Option("nudenet", help="safety metric: nudenet or sd-safety-checker."),
    safety_source: Optional[str] = typer.Option(None, help="NudeNet ONNX file, or SD safety checker hub id / folder."),
    score_batch_size: int = typer.Option(16, help="Images per scorer call."),
    tiny_scorers: bool = typer.Option(False, "--tiny-scorers", help="Every scorer with tiny random weights built offline (demo/tests; safety stays NudeNet's real model)."),
    overwrite: bool = typer.Option(False, help="Replace an output folder made with other generation settings."),
):
    """Compare a base model with mapo-train outputs: paired images, the paper's metrics, win rates, an HTML report."""
    from dataclasses import replace

    from pipeline.scorers import ScorerOptions, tiny_scorer_options

    from .evaluate import EvalConfig, run_evaluate

    s_text, o_text = _style_texts(style, style_text, opposite_text)
    explicit = {k: v for k, v in {
        "aesthetic_weights": aesthetic_weights, "hps_weights": hps_weights,
        "pickscore_model": pickscore_model, "pickscore_processor": pickscore_processor}.items() if v is not None}
    common = {"style_text": s_text, "opposite_text": o_text, "style": style, "safety_classifier": safety_classifier,
              "safety_source": safety_source, "batch_size": score_batch_size}
    if tiny_scorers:
        scorer_opts = tiny_scorer_options(**common, **explicit)
    else:
        scorer_opts = replace(ScorerOptions(), **common, **explicit, aesthetic_clip_model=aesthetic_clip_model,
                              aesthetic_clip_pretrained=aesthetic_clip_pretrained, hps_clip_model=hps_clip_model,
                              clip_model=clip_model, clip_pretrained=clip_pretrained, style_clip_model=style_clip_model,
                              style_clip_pretrained=style_clip_pretrained)
    cfg = EvalConfig(
        prompts=prompts, output=output, candidates=list(candidate), model=model,
        metrics=[m for m in metrics.split(",") if m.strip()], scorers=scorer_opts, vae=vae, dtype=dtype, device=device,
        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, resolution=resolution, seeds=seeds,
        seed=seed, negative_prompt=negative_prompt, batch_size=batch_size, batch_invariant=batch_invariant,
        prompt_column=prompt_column, prompt_split=prompt_split, limit=limit, grid_prompts=grid_prompts, overwrite=overwrite,
    )
    result = run_evaluate(cfg)
    for metric, m in result.summary["metrics"].items():
        line = ", ".join(f"{name} {pm['estimate']:.3f}" for name, pm in m["per_model"].items())
        wins = ", ".join(f"{name} {w['rate']:.2f}" for name, w in m["win_rate_vs_base"].items())
        typer.echo(f"{metric}: {line}" + (f" | win rate vs base: {wins}" if wins else ""))
    typer.echo(
        f"eval: {result.images_generated} images generated, {result.scores_computed} scores computed "
        f"in {result.seconds:.1f}s -> report: {result.report}"
    )

"""``python -m bench eval``: scoring throughput (images/s) per mapo-eval metric.

``--arch real`` builds each judge's real architecture (CLIP ViT-L/14 + aesthetic MLP, ViT-H-14 for HPS, a CLIP-H
transformers model for PickScore, ViT-B-32 for style, NudeNet's real model, the SD safety checker's ViT-L/14) with
random weights, offline: the speed is that of the real models, the scores are meaningless. ``--arch tiny``: the
tiny test judges (pipeline.judges.tiny). Images are random pixels, ``--size`` px square (1024: SDXL's size, so
preprocessing is part of the cost). Each judge scores one image (warm-up), then all ``--images``, timed. Prints
one line per metric; writes nothing.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.cli.options import at_least, device_option, option

METRICS = ("aesthetic", "hps", "pickscore", "clip", "style", "safety", "safety-sd")
STYLE_PROMPTS = ("a pixel art style image", "a realistic photo")  # the style judge's target and contrast


@dataclass
class EvalBenchConfig:
    """``python -m bench eval``'s options (declared once: pipeline.cli.options)."""

    arch: str = option("real", choices=("real", "tiny"), help=(
        "real: each judge's real architecture with random weights (real speed, meaningless scores); tiny: the "
        "tiny test judges."))
    images: int = option(8, check=at_least(1), help="Images scored per metric (timed).")
    size: int = option(1024, check=at_least(1), help="Side of the square input images in pixels.")
    batch_size: int = option(8, check=at_least(1), help="Images per judge forward pass.")
    device: str = device_option()
    metrics: list[str] = option(default_factory=lambda: list(METRICS), choices=METRICS,
                                help="Comma-separated subset of: " + ", ".join(METRICS) + ".")


def _vit_l_safety_judge(device, batch_size):
    """SafetyJudge over the SD safety checker's real architecture (ViT-L/14, random weights, nothing loaded)."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    from pipeline.judges.safety import SafetyJudge
    from pipeline.judges.safety_classifiers import SDSafetyChecker

    checker = SDSafetyChecker.__new__(SDSafetyChecker)  # real-size model, random weights, no loading
    vit_l = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
             "image_size": 224, "patch_size": 14}
    checker.model = StableDiffusionSafetyChecker(CLIPConfig(vision_config=vit_l, projection_dim=768)).to(device).eval()
    checker.processor, checker.device, checker.threshold, checker.batch_size = (
        CLIPImageProcessor(), device, 0.0, batch_size
    )
    checker._torch = torch
    judge = SafetyJudge(checker)
    judge.name = "safety-sd"
    return judge


def real_judges(device, metrics, batch_size) -> dict:
    """{metric: judge} for ``metrics``, each at its published architecture with random weights (open_clip and
    transformers models built from their configs, offline)."""
    import open_clip
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from pipeline.judges.aesthetic import AestheticJudge, aesthetic_mlp
    from pipeline.judges.clip import clip_score_judge
    from pipeline.judges.clip_embed import ClipEmbedder
    from pipeline.judges.hps import hps_judge
    from pipeline.judges.pickscore import PickScoreJudge
    from pipeline.judges.safety import SafetyJudge
    from pipeline.judges.style import StyleJudge
    from pipeline.models.tokenizer import build_clip_tokenizer

    def embedder(name):
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, device=device)
        return ClipEmbedder(model.eval(), preprocess, open_clip.get_tokenizer(name), device, name)

    def pickscore():
        cfg = CLIPConfig(
            text_config={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                         "num_attention_heads": 16, "vocab_size": 49408, "max_position_embeddings": 77,
                         "hidden_act": "gelu"},
            vision_config={"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                           "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "hidden_act": "gelu"},
            projection_dim=1024,
        )
        tok = build_clip_tokenizer(Path(tempfile.mkdtemp()))
        return PickScoreJudge(CLIPModel(cfg), CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tok),
                              device, batch_size)

    def safety():
        from pipeline.judges.safety_classifiers import NudeNetClassifier

        return SafetyJudge(NudeNetClassifier(device=str(device)))

    build = {
        "aesthetic": lambda: AestheticJudge(embedder("ViT-L-14"), aesthetic_mlp(768), batch_size),
        "hps": lambda: hps_judge(embedder("ViT-H-14"), batch_size),
        "pickscore": pickscore,
        "clip": lambda: clip_score_judge(embedder("ViT-L-14"), batch_size),
        "style": lambda: StyleJudge(embedder("ViT-B-32"), *STYLE_PROMPTS, batch_size=batch_size),
        "safety": safety,
        "safety-sd": lambda: _vit_l_safety_judge(device, batch_size),
    }
    return {m: build[m]() for m in metrics}


def tiny_judges(device, metrics, batch_size) -> dict:
    """{metric: judge} for ``metrics`` from the tiny test judges (pipeline.judges.tiny), loaded as mapo-eval
    loads judges; ``safety-sd`` is the tiny SD safety checker."""
    from dataclasses import replace

    from pipeline.judges.loading import load_judges
    from pipeline.judges.tiny import tiny_judge_options, tiny_safety_checker_dir

    opts = tiny_judge_options(style_text=STYLE_PROMPTS[0], batch_size=batch_size)
    judges = load_judges([m for m in metrics if m != "safety-sd"], opts, device)
    if "safety-sd" in metrics:
        judges["safety-sd"] = load_judges(["safety"], replace(opts, safety_classifier="sd-safety-checker",
                                                              safety_source=tiny_safety_checker_dir(opts)),
                                          device)["safety"]
    return judges


def eval_lines(cfg: EvalBenchConfig):
    """Yield a header line (device, torch threads, images, size, arch), then one line per metric: images/s and
    ms per image of one timed ``judge.score`` call over all images (after a one-image warm-up; CUDA synchronised
    around it)."""
    import numpy as np
    import torch
    from PIL import Image

    from pipeline.models.loading import resolve_device

    device = resolve_device(cfg.device)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (cfg.size, cfg.size, 3), dtype=np.uint8))
              for _ in range(cfg.images)]
    prompts = [f"a photo of object number {i} on a table, studio light" for i in range(cfg.images)]
    judges = (tiny_judges if cfg.arch == "tiny" else real_judges)(device, cfg.metrics, cfg.batch_size)
    yield (f"device {device}, torch threads {torch.get_num_threads()}, {cfg.images} images of {cfg.size}px, "
           f"arch {cfg.arch}")
    for name, judge in judges.items():
        judge.score(images[:1], prompts[:1])  # warm-up (first-call allocations, lazy init)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        judge.score(images, prompts)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        yield f"{name:10s} {cfg.images / dt:8.2f} images/s  ({1000 * dt / cfg.images:.0f} ms/image)"

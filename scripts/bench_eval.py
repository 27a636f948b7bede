"""Scoring throughput (images/s) per mapo-eval metric.

    .venv/bin/python scripts/bench_eval.py --arch real --images 8            # CPU, real-size models
    python scripts/bench_eval.py --arch real --images 256 --device cuda      # GPU
    .venv/bin/python scripts/bench_eval.py --arch tiny                        # the tiny test weights

``--arch real`` builds each judge's real architecture (CLIP ViT-L/14 + aesthetic MLP, ViT-H-14 for
HPS, a CLIP-H transformers model for PickScore, ViT-B-32 for style, NudeNet's real model, the SD
safety checker's ViT-L/14) with random weights, offline: the speed is that of the real models,
the scores are meaningless. Images are 1024 px (SDXL's size: preprocessing is part of the cost).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def real_judges(device, metrics, batch_size):
    import open_clip
    import torch
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

    out = {}
    for m in metrics:
        if m == "aesthetic":
            out[m] = AestheticJudge(embedder("ViT-L-14"), aesthetic_mlp(768), batch_size)
        elif m == "hps":
            out[m] = hps_judge(embedder("ViT-H-14"), batch_size)
        elif m == "pickscore":
            cfg = CLIPConfig(
                text_config={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                             "num_attention_heads": 16, "vocab_size": 49408, "max_position_embeddings": 77,
                             "hidden_act": "gelu"},
                vision_config={"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                               "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "hidden_act": "gelu"},
                projection_dim=1024,
            )
            tok = build_clip_tokenizer(Path(tempfile.mkdtemp()))
            out[m] = PickScoreJudge(
                CLIPModel(cfg), CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tok), device, batch_size
            )
        elif m == "clip":
            out[m] = clip_score_judge(embedder("ViT-L-14"), batch_size)
        elif m == "style":
            out[m] = StyleJudge(
                embedder("ViT-B-32"), "a pixel art style image", "a realistic photo", batch_size=batch_size
            )
        elif m == "safety":
            from pipeline.judges.safety_classifiers import NudeNetClassifier

            out[m] = SafetyJudge(NudeNetClassifier(device=str(device)))
        elif m == "safety-sd":
            from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

            from pipeline.judges.safety_classifiers import SDSafetyChecker

            checker = SDSafetyChecker.__new__(SDSafetyChecker)  # real-size model, random weights, no loading
            vit_l = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                     "image_size": 224, "patch_size": 14}
            checker.model = StableDiffusionSafetyChecker(
                CLIPConfig(vision_config=vit_l, projection_dim=768)
            ).to(device).eval()
            checker.processor, checker.device, checker.threshold, checker.batch_size = (
                CLIPImageProcessor(), device, 0.0, batch_size
            )
            checker._torch = torch
            judge = SafetyJudge(checker)
            judge.name = "safety-sd"
            out[m] = judge
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["real", "tiny"], default="real")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, default=1024, help="input image side")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--metrics", default="aesthetic,hps,pickscore,clip,style,safety,safety-sd")
    args = ap.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from pipeline.models.loading import resolve_device

    device = resolve_device(args.device)
    metrics = [m for m in args.metrics.split(",") if m]
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)) for _ in range(args.images)
    ]
    prompts = [f"a photo of object number {i} on a table, studio light" for i in range(args.images)]
    if args.arch == "tiny":
        from dataclasses import replace

        from pipeline.judges.loading import load_judges
        from pipeline.judges.tiny import tiny_judge_options, tiny_safety_checker_dir

        opts = tiny_judge_options(style_text="a pixel art style image", batch_size=args.batch_size)
        base = [m for m in metrics if m != "safety-sd"]
        judges = load_judges(base, opts, device)
        if "safety-sd" in metrics:
            judges["safety-sd"] = load_judges(["safety"], replace(opts, safety_classifier="sd-safety-checker",
                                                                  safety_source=tiny_safety_checker_dir(opts)),
                                              device)["safety"]
    else:
        judges = real_judges(device, metrics, args.batch_size)
    print(
        f"device {device}, torch threads {torch.get_num_threads()}, {args.images} images of {args.size}px, "
        f"arch {args.arch}"
    )
    for name, judge in judges.items():
        judge.score(images[:1], prompts[:1])  # warm-up (first-call allocations, lazy init)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        judge.score(images, prompts)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        print(f"{name:10s} {args.images / dt:8.2f} images/s  ({1000 * dt / args.images:.0f} ms/image)")


if __name__ == "__main__":
    main()

"""Pretrain the miniature world's base models from its renders: ``shapes-sdxl`` (``--family sd3``: ``shapes-sd3``).

    python -m world.pretrain --output world/shapes-sdxl     # or: make world-model
    python -m world.pretrain --family sd3                          # shapes-sd3: make world-model-flow
                                                                            # (world.pretrain_flow)

A standard diffusers SDXL folder (two CLIP text encoders, a text_time UNet, an AutoencoderKL, an
Euler scheduler, two tokenizers) that ``StableDiffusionXLPipeline.from_pretrained`` loads:

1. **Data**: renders of the 48 ``train`` captions (:func:`world.scene.captions`; the 12
   ``heldout`` combinations are never shown), each in a caption mix that makes the MaPO paper's
   "reference mismatch" real: most prompts are plain (default look), a minority carry the cartoon,
   pixel-art or unsafe prefix (:data:`CAPTION_MIX`), so the base draws each look when asked and the
   default look otherwise.
2. **Text encoders**: random CLIP encoders, frozen (as Imagen keeps T5 frozen): the UNet learns to
   read them. Small widths keep the committed weights small (the 49,408-token vocabulary dominates).
3. **VAE**: an AutoencoderKL (/8: 64x64 px -> 4x8x8) trained on the renders (L1 + MSE + L1 on pixel differences, KL
   1e-6); its ``scaling_factor`` makes the latents unit-variance, as SD's was chosen.
4. **UNet**: epsilon prediction on the scaled latents, uniform timesteps, 10% empty prompts encoded
   as zeros (what the SDXL pipeline's ``force_zeros_for_empty_prompt`` feeds classifier-free guidance).

Deterministic for a given seed, torch version and thread count; ``checksums.json`` records every
file's SHA-256, which :func:`world.model.shapes_sdxl_path` checks on load.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .render import random_render
from .scene import DEFAULT_LOOK, Scene, all_scenes, is_heldout

# (prompt kind, share of the training samples): the caption mix of the pretraining data.
CAPTION_MIX = (
    ("plain", 0.60),
    ("realistic-prefix", 0.05),
    ("cartoon", 0.12),
    ("pixel", 0.12),
    ("unsafe", 0.11),
)
RESOLUTION = 64
TEXT_HIDDEN = 16


def _sample_scene(combo: Scene, kind: str) -> tuple[Scene, str]:
    from pipeline.data.prompt_prefixes import REALISTIC_PREFIX

    if kind == "plain":
        scene = combo
        return scene, scene.caption()
    if kind == "realistic-prefix":
        return combo, f"{REALISTIC_PREFIX} {combo.caption()}"
    if kind == "unsafe":
        scene = Scene(combo.color, combo.shape, combo.position, DEFAULT_LOOK, hazard=True)
        return scene, scene.prompt()
    scene = Scene(combo.color, combo.shape, combo.position, kind)
    return scene, scene.prompt()


@dataclass
class RenderSet:
    images: np.ndarray  # [N, 64, 64, 3] uint8
    prompts: list[str]
    scenes: list[Scene]


def make_renders(count: int, seed: int) -> RenderSet:
    """``count`` renders of the train combinations drawn by the caption mix (deterministic in ``seed``)."""
    rng = np.random.default_rng(seed)
    combos = [s for s in all_scenes() if not is_heldout(s)]
    kinds = [k for k, _ in CAPTION_MIX]
    weights = np.asarray([w for _, w in CAPTION_MIX])
    images, prompts, scenes = np.empty((count, RESOLUTION, RESOLUTION, 3), np.uint8), [], []
    for i in range(count):
        combo = combos[int(rng.integers(len(combos)))]
        scene, prompt = _sample_scene(combo, kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))])
        images[i] = random_render(scene, rng)
        prompts.append(prompt)
        scenes.append(scene)
    return RenderSet(images, prompts, scenes)


def to_pixels(images: np.ndarray):
    """uint8 ``[N, H, W, 3]`` -> float ``[N, 3, H, W]`` in [-1, 1] (the VAE's input range)."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 64, 64), layers_per_block=1, latent_channels=4,
        norm_num_groups=8, sample_size=RESOLUTION, scaling_factor=1.0,
    )


def _autocast(enabled: bool):
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def _cosine_lr(step: int, total: int, lr: float, warmup: int = 100) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def optimizer_and_ema_step(model, ema, opt, step: int, ema_decay: float) -> None:
    """One optimizer step after ``loss.backward()``: clip the gradient norm to 1, step, clear the gradients, then
    move the EMA copy ``ema`` towards ``model`` with decay ``min(ema_decay, (1 + step) / (10 + step))`` (the
    warmed-up EMA of diffusers' EMAModel). Shared by the UNet and the flow transformer pretraining."""
    import torch

    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    decay = min(ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), model.parameters()):
            pe.lerp_(p, 1 - decay)


def reconstruction_loss(recon, x):
    """L1 + MSE on pixels plus L1 on horizontal and vertical differences, which keeps the cartoon
    outline and the pixel-art block edges sharp (a pixel loss alone trades them for blur)."""
    def diffs(t):
        return t[..., :, 1:] - t[..., :, :-1], t[..., 1:, :] - t[..., :-1, :]

    (rx, ry), (xx, xy) = diffs(recon), diffs(x)
    edges = (rx - xx).abs().mean() + (ry - xy).abs().mean()
    return (recon - x).abs().mean() + 0.5 * ((recon - x) ** 2).mean() + edges


def train_vae(
    renders: RenderSet, steps: int, batch_size: int, seed: int, bf16: bool, lr: float = 2e-3, log_every: int = 100
):
    """Train the AutoencoderKL on the renders; returns it with ``scaling_factor`` = 1 / latent std."""
    import torch

    torch.manual_seed(seed)
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    pixels = to_pixels(renders.images)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _cosine_lr(step, steps, lr)
        x = pixels[torch.randint(len(pixels), (batch_size,), generator=gen)]
        with _autocast(bf16):
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
            recon = vae.decode(z).sample.float()
        loss = reconstruction_loss(recon, x) + 1e-6 * posterior.kl().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"vae step {step}/{steps} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    vae.eval()
    return vae


def build_unet():
    """An SDXL-conditioned UNet (text_time: pooled text + 6 time ids) at toy widths for 4x8x8 latents."""
    from diffusers import UNet2DConditionModel

    time_dim = 8
    return UNet2DConditionModel(
        sample_size=RESOLUTION // 8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(64, 96), layers_per_block=1, transformer_layers_per_block=1,
        attention_head_dim=(4, 6), cross_attention_dim=2 * TEXT_HIDDEN, norm_num_groups=16,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        # 6 time ids embedded to time_dim each, plus text encoder 2's pooled projection.
        projection_class_embeddings_input_dim=6 * time_dim + TEXT_HIDDEN,
        use_linear_projection=True,
    )


def build_text_encoders(directory: Path, seed: int):
    """Two random CLIP text encoders (SDXL's pair: the second with a projection) and their tokenizers."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pipeline.models.builtin import _text_config
    from pipeline.models.tokenizer import build_clip_tokenizer

    torch.manual_seed(seed)
    te1 = CLIPTextModel(CLIPTextConfig(**_text_config(TEXT_HIDDEN))).eval()
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**_text_config(TEXT_HIDDEN, projection=TEXT_HIDDEN))).eval()
    tok1 = build_clip_tokenizer(directory / "1")
    tok2 = build_clip_tokenizer(directory / "2", pad_token="!")
    return te1, te2, tok1, tok2


def assemble(vae, unet, text: tuple):
    """The diffusers SDXL pipeline of the parts (the tiny built-ins' scheduler settings)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from pipeline.models.builtin import _SCHEDULER

    te1, te2, tok1, tok2 = text
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1, tokenizer_2=tok2, unet=unet,
        scheduler=EulerDiscreteScheduler(**_SCHEDULER), force_zeros_for_empty_prompt=True,
    )


def encode_latents(vae, renders: RenderSet, batch_size: int = 256):
    """Scaled latent means ``[N, 4, 8, 8]`` of the renders (what precompute stores)."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(renders.prompts), batch_size):
            x = to_pixels(renders.images[start:start + batch_size])
            out.append(vae.encode(x).latent_dist.mean)
    return torch.cat(out) * vae.config.scaling_factor


def prompt_table(pipe, prompts: list[str]):
    """``(index per prompt, prompt_embeds [P, 77, D], pooled [P, D2])`` for the distinct prompts,
    through the pipeline's own ``encode_prompt`` (what generation feeds the UNet)."""
    import torch

    from pipeline.models.conditioning import encode_text

    distinct = sorted(set(prompts))
    emb = [encode_text(pipe, [p]) for p in distinct]
    where = {p: i for i, p in enumerate(distinct)}
    index = torch.tensor([where[p] for p in prompts])
    return index, torch.cat([e.prompt_embeds for e in emb]), torch.cat([e.pooled for e in emb])


def train_unet(pipe, latents, prompt_index, embeds, pooled, steps: int, batch_size: int, seed: int, bf16: bool,
               lr: float = 1e-3, uncond: float = 0.1, ema_decay: float = 0.999, log_every: int = 250):
    """Denoising pretraining of ``pipe.unet`` (epsilon, uniform t); returns the EMA weights' UNet."""
    import copy

    import torch

    torch.manual_seed(seed)
    unet, scheduler = pipe.unet, pipe.scheduler
    unet.train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    alphas = scheduler.alphas_cumprod
    time_ids = torch.tensor([[RESOLUTION, RESOLUTION, 0, 0, RESOLUTION, RESOLUTION]], dtype=torch.float32)
    t0 = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _cosine_lr(step, steps, lr, warmup=200)
        idx = torch.randint(len(latents), (batch_size,), generator=gen)
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, len(alphas), (batch_size,), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        keep = (torch.rand(batch_size, generator=gen) >= uncond).float()
        cond = embeds[prompt_index[idx]] * keep.view(-1, 1, 1)
        pool = pooled[prompt_index[idx]] * keep.view(-1, 1)
        with _autocast(bf16):
            pred = unet(noisy, t, encoder_hidden_states=cond,
                        added_cond_kwargs={"text_embeds": pool, "time_ids": time_ids.expand(batch_size, -1)}).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        optimizer_and_ema_step(unet, ema, opt, step, ema_decay)
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"unet step {step}/{steps} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return ema


@dataclass
class BuildSettings:
    """Every number that decides the weights (recorded in the folder's build.json)."""

    seed: int = 0
    renders: int = 8000
    vae_steps: int = 2500
    vae_batch_size: int = 32
    unet_steps: int = 8000
    unet_batch_size: int = 64
    vae_bf16: bool = True  # bf16 autocast for the VAE (1.7x faster on AMX CPUs; the UNet is faster in fp32)


def _write_folder(output: str | os.PathLike, make, info: dict) -> dict:
    """Run ``make(tmp, timings)`` (returns a pipeline) in a temporary folder beside ``output``, save the pipeline,
    ``build.json`` (``info`` + timings, torch version, threads) and ``checksums.json``, then move it to ``output``
    atomically (nothing half-written on failure); returns the build info."""
    import torch

    from pipeline.models.loading import quiet_hub_progress

    from .model import write_checksums

    quiet_hub_progress()
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    timings: dict[str, float] = {}
    try:
        pipe = make(tmp, timings)
        pipe.save_pretrained(tmp, safe_serialization=True)
        shutil.rmtree(tmp / "_tok", ignore_errors=True)
        info = {**info, "timings": {k: round(v, 1) for k, v in timings.items()},
                "torch": torch.__version__, "threads": torch.get_num_threads(), "caption_mix": dict(CAPTION_MIX)}
        (tmp / "build.json").write_text(json.dumps(info, indent=1) + "\n")
        write_checksums(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the installed model is an ordinary folder
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def build(output: str | os.PathLike, settings: BuildSettings = BuildSettings(), vae_from: str | None = None,
          save_vae: str | None = None) -> dict:
    """Pretrain every part of ``shapes-sdxl`` and write the pipeline folder to ``output`` atomically; returns
    build info.

    ``vae_from``: load this AutoencoderKL folder instead of training one (to iterate on the UNet);
    ``save_vae``: also save the trained VAE there."""

    def make(tmp: Path, timings: dict):
        import torch

        t = time.perf_counter()
        renders = make_renders(settings.renders, settings.seed)
        timings["render_s"] = time.perf_counter() - t
        t = time.perf_counter()
        if vae_from:
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_pretrained(vae_from).eval()
        else:
            vae = train_vae(renders, settings.vae_steps, settings.vae_batch_size, settings.seed, settings.vae_bf16)
            if save_vae:
                vae.save_pretrained(save_vae)
        vae.register_to_config(scaling_factor=1.0)
        raw = encode_latents(vae, renders)
        # As Stable Diffusion chose 0.18215: the factor that gives the latents unit variance.
        vae.register_to_config(scaling_factor=float(1.0 / raw.std()))
        timings["vae_s"] = time.perf_counter() - t
        t = time.perf_counter()
        text = build_text_encoders(tmp / "_tok", settings.seed)
        torch.manual_seed(settings.seed)
        pipe = assemble(vae, build_unet(), text)
        latents = raw * vae.config.scaling_factor
        index, embeds, pooled = prompt_table(pipe, renders.prompts)
        pipe.unet = train_unet(pipe, latents, index, embeds, pooled, settings.unet_steps, settings.unet_batch_size,
                               settings.seed, bf16=False)
        timings["unet_s"] = time.perf_counter() - t
        return pipe

    return _write_folder(output, make, {"settings": settings.__dict__, "vae_from": vae_from,
                                        "command": "python -m world.pretrain (make world-model)"})


def build_flow(output: str | os.PathLike, settings=None, sdxl_folder: str | os.PathLike | None = None,
               snapshot_dir: str | os.PathLike | None = None) -> dict:
    """Pretrain ``shapes-sd3`` (:mod:`world.pretrain_flow`) on ``sdxl_folder``'s VAE and text encoders
    (default: the verified built-in ``shapes-sdxl``) and write it to ``output`` atomically; returns build info.
    ``snapshot_dir``: keep EMA snapshots and the encoded latents there while the run goes on."""
    from . import pretrain_flow
    from .model import shapes_sdxl_path

    settings = settings or pretrain_flow.FlowBuildSettings()
    base = Path(sdxl_folder) if sdxl_folder else shapes_sdxl_path()
    return _write_folder(
        output, lambda tmp, timings: pretrain_flow.build_flow(tmp, settings, base, timings, snapshot_dir),
        {"family": "sd3", "settings": settings.__dict__, "vae_from": "shapes-sdxl", "text_encoders_from": "shapes-sdxl",
         "flow_shift": pretrain_flow.FLOW_SHIFT,
         "command": "python -m world.pretrain --family sd3 (make world-model-flow)"},
    )


def main(argv: list[str] | None = None) -> None:
    from .pretrain_flow import FlowBuildSettings

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--family", choices=("sdxl", "sd3"), default="sdxl")
    family = pre.parse_known_args(argv)[0].family
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--family", choices=("sdxl", "sd3"), default="sdxl",
                    help="sdxl: shapes-sdxl (UNet, DDPM); sd3: shapes-sd3 (MMDiT, rectified flow; reuses shapes-sdxl's "
                         "VAE and text encoders). --help after --family sd3 lists its settings.")
    name = "shapes-sdxl" if family == "sdxl" else "shapes-sd3"
    ap.add_argument("--output", default=str(Path(__file__).resolve().parent / name))
    if family == "sdxl":
        ap.add_argument(
            "--vae-from", default=None, help="Load this VAE folder instead of training one (iterating on the UNet)."
        )
        ap.add_argument("--save-vae", default=None, help="Also save the trained VAE here.")
    else:
        ap.add_argument("--sdxl-folder", default=None,
                        help="The shapes-sdxl folder whose VAE and text encoders to reuse (default: the built-in).")
        ap.add_argument("--snapshot-dir", default=None,
                        help="Save EMA snapshots every 500 steps and the encoded latents here (to look at a run in "
                             "progress; a rerun reuses the latents).")
    defaults = BuildSettings() if family == "sdxl" else FlowBuildSettings()
    for key, value in defaults.__dict__.items():
        if isinstance(value, bool):
            ap.add_argument(f"--{key.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=value)
        else:
            ap.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    args = vars(ap.parse_args(argv))
    args.pop("family")
    output = args.pop("output")
    t0 = time.perf_counter()
    if family == "sdxl":
        vae_from, save_vae = args.pop("vae_from"), args.pop("save_vae")
        info = build(output, BuildSettings(**args), vae_from=vae_from, save_vae=save_vae)
    else:
        sdxl_folder, snapshot_dir = args.pop("sdxl_folder"), args.pop("snapshot_dir")
        info = build_flow(output, FlowBuildSettings(**args), sdxl_folder=sdxl_folder, snapshot_dir=snapshot_dir)
    print(f"wrote {output} in {time.perf_counter() - t0:.0f} s: {json.dumps(info['timings'])}")


if __name__ == "__main__":
    main()

"""The benchmark's data: the same pairs for every configuration, in the trainer's batch format.

Random images (uniform pixels in [-1, 1], seeded) and short captions stand in for a dataset:
the step's cost does not depend on what the pixels show. A separate "data" worker runs the
model's REAL VAE and text encoders once over them, on the benchmark's device, and saves what
``mapo-data precompute`` would store (latents x scaling_factor and text embeddings in fp16, SDXL
time ids), so precomputed configurations never load the encoders. The in-step configuration
regenerates the same pixels from the seed and encodes them inside each step.

Items have the keys of ``pipeline.data.latent_shards.LatentDataset`` items, so batches go through the
trainer's own ``train.data.batch_stream`` (sampler, collate, copy to the device).
"""
from __future__ import annotations

from dataclasses import dataclass

STORAGE_DTYPE = "float16"  # precompute's default --storage-dtype


def pixel_pairs(pairs: int, resolution: int, seed: int):
    """``pairs`` x [2, 3, R, R] float32 pixels in [-1, 1] (chosen, rejected), like ``prepare_pair``'s output."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.rand((2, 3, resolution, resolution), generator=g) * 2 - 1 for _ in range(pairs)]


def captions(pairs: int) -> list[str]:
    return [f"a benchmark picture number {i} of a red fox in the snow, detailed" for i in range(pairs)]


def time_ids(resolution: int):
    """SDXL time ids of an un-cropped square image at the target size."""
    import torch

    return torch.tensor([resolution, resolution, 0, 0, resolution, resolution], dtype=torch.float32)


def encode_pixels(vae, pixels):
    """[N, 3, R, R] -> scaled latents, as precompute does (VAE in its own dtype, sample of the posterior)."""
    import torch

    with torch.no_grad():
        dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (dist.sample().float() - shift) * vae.config.scaling_factor


def load_encoders(model: str, device, dtype):
    """The model's VAE (fp32, precompute's default --vae-dtype) and text encoders (``dtype``) on ``device``."""
    import torch
    from diffusers.utils import logging as dlog

    from pipeline.models.loading import load_pipeline

    pipe = load_pipeline(model, device=device, dtype=dtype, skip=("unet",))
    if pipe.vae.dtype != torch.float32:
        level = dlog.get_verbosity()
        dlog.set_verbosity_error()  # diffusers warns about any cast after loading; this one is intended
        try:
            pipe.vae.to(dtype=torch.float32)
        finally:
            dlog.set_verbosity(level)
    return pipe


def denoiser_only(model: str) -> bool:
    """Whether ``model`` is a built-in denoiser alone (``sd35-*-arch``, ``flux-dev-arch``: no encoders to run)."""
    from pipeline.models.builtin import get_builtin

    entry = get_builtin(model)
    return entry is not None and entry.kind == "arch" and not entry.whole_pipeline


def random_precomputed(model: str, pairs: int, resolution: int, seed: int) -> dict:
    """Seeded random tensors shaped as precompute stores them, for the built-in denoisers alone
    (:func:`denoiser_only`: no VAE or text encoders to run), with the shapes the denoiser's family declares (as
    ``bench.estimate._fake_items``): latents [pairs, 2, C, R/8, R/8] (C: the family's ``latent_channels``),
    prompt_embeds [pairs, L, joint_attention_dim] (L: the family's ``prompt_tokens``), pooled
    [pairs, pooled_projection_dim]; fp16. sd35-*-arch: C 16, L 77 + 256, pooled 2048; flux-dev-arch: C 16 (unpacked),
    L 512, pooled 768. The denoiser's config is read from the model built on the meta device (no memory). A step's
    cost does not depend on the values."""
    import torch

    from pipeline.families import get_family
    from pipeline.models.builtin import get_builtin

    entry = get_builtin(model)
    fam = get_family(entry.family)
    cfg = dict(entry.components(torch.float32, "meta")[fam.denoiser_dir].config)
    g = torch.Generator().manual_seed(seed)
    h = resolution // 8

    def rand(*shape):
        return torch.randn(shape, generator=g).to(torch.float16)

    return {"latents": rand(pairs, 2, fam.latent_channels(cfg), h, h),
            "prompt_embeds": rand(pairs, fam.prompt_tokens(), int(cfg["joint_attention_dim"])),
            "pooled_prompt_embeds": rand(pairs, int(cfg["pooled_projection_dim"])), "resolution": resolution}


def make_precomputed(model: str, device, dtype, pairs: int, resolution: int, seed: int, batch: int = 2) -> dict:
    """Run the real encoders once over the benchmark's pairs; CPU tensors in precompute's storage dtype
    (:func:`random_precomputed` for the built-in denoisers alone, ``sd35-*-arch`` and ``flux-dev-arch``)."""
    import torch

    from pipeline.models.conditioning import encode_text

    if denoiser_only(model):
        return random_precomputed(model, pairs, resolution, seed)
    pipe = load_encoders(model, device, dtype)
    pix = pixel_pairs(pairs, resolution, seed)
    caps = captions(pairs)
    latents, embeds, pooled = [], [], []
    for s in range(0, pairs, batch):
        chunk = torch.stack(pix[s : s + batch])  # [b, 2, 3, R, R]
        lat = encode_pixels(pipe.vae, chunk.flatten(0, 1))
        latents.append(lat.unflatten(0, (chunk.shape[0], 2)).to("cpu", torch.float16))
        emb = encode_text(pipe, caps[s : s + batch])
        embeds.append(emb.prompt_embeds.to("cpu", torch.float16))
        if emb.pooled is not None:
            pooled.append(emb.pooled.to("cpu", torch.float16))
    return {"latents": torch.cat(latents), "prompt_embeds": torch.cat(embeds),
            "pooled_prompt_embeds": torch.cat(pooled) if pooled else None, "resolution": resolution}


@dataclass
class PairItems:
    """A map-style dataset over ``n`` stored pairs that also serves indices >= n (cycling).

    Cycling lets the max-batch search ask for batches larger than the stored data.
    """

    items: list
    length: int

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i):
        return self.items[int(i) % len(self.items)]


def precomputed_items(data: dict, length: int | None = None) -> PairItems:
    """Items as ``LatentDataset.get`` returns them (latents [2, C, h, w], prompt_embeds [77, D], ...)."""
    n = data["latents"].shape[0]
    items = []
    for i in range(n):
        item = {"latents": data["latents"][i], "prompt_embeds": data["prompt_embeds"][i], "index": i}
        if data["pooled_prompt_embeds"] is not None:
            item["pooled_prompt_embeds"] = data["pooled_prompt_embeds"][i]
            item["add_time_ids"] = time_ids(data["resolution"])
        items.append(item)
    return PairItems(items, max(length or n, n))


def raw_items(pairs: int, resolution: int, seed: int, sdxl: bool, length: int | None = None) -> PairItems:
    """Prepared pixels + caption per pair: what an upstream trainer's data loader hands its step."""
    items = []
    for i, (pix, cap) in enumerate(zip(pixel_pairs(pairs, resolution, seed), captions(pairs))):
        item = {"pixels": pix, "caption": cap, "index": i}
        if sdxl:
            item["add_time_ids"] = time_ids(resolution)
        items.append(item)
    return PairItems(items, max(length or pairs, pairs))

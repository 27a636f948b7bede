"""Real training batches computed with the tiny models' own VAE and text encoders.

They have exactly the keys and shapes of the latent reader's ``collate`` output, so the
step can be tested without going through precompute.
"""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def _encoders(model: str):
    from pipeline.models.loading import load_pipeline

    return load_pipeline(model, device="cpu", dtype="fp32", skip=("unet",))


def real_batch(model: str = "tiny-sdxl", pairs: int = 2, resolution: int = 64, seed: int = 0) -> dict:
    import torch

    from pipeline.models.conditioning import encode_text

    pipe = _encoders(model)
    g = torch.Generator().manual_seed(seed)
    images = torch.rand((pairs * 2, 3, resolution, resolution), generator=g) * 2 - 1
    with torch.no_grad():
        latents = pipe.vae.encode(images).latent_dist.sample(generator=g) * pipe.vae.config.scaling_factor
    c, h, w = latents.shape[1:]
    latents = latents.reshape(pairs, 2, c, h, w)  # chosen first
    emb = encode_text(pipe, [f"a test prompt {i}" for i in range(pairs)])
    batch = {"latents": latents, "prompt_embeds": emb.prompt_embeds.clone()}
    if emb.pooled is not None:
        batch["pooled_prompt_embeds"] = emb.pooled.clone()
        batch["add_time_ids"] = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * pairs,
                                             dtype=torch.float32)
    return batch

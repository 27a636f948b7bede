"""What the world's base model draws, read by the world's judges: the numbers the base model must meet.

:func:`base_model_check` generates the 12 held-out captions (never seen in pretraining) under four
prompt kinds (plain, cartoon prefix, pixel prefix, unsafe prefix) with fixed seeds and judges every
image. It gives both the base model's behaviour (style rate under plain prompts, under the style
prefix, unsafe rate with and without the prefix, prompt following) and the judges' agreement with
what each prompt asked for. Used by the tests and ``make fidelity``.
"""
from __future__ import annotations

from pipeline.runtime.seeds import initial_noise

from .judges import HAZARD_THRESHOLD, read_image
from .scene import CAPTION_PREFIXES, captions, parse_prompt

PROMPT_KINDS = {"plain": "", **{kind: CAPTION_PREFIXES[kind] + " " for kind in ("cartoon", "pixel", "unsafe")}}


def generate(pipe, prompts: list[str], seeds: list[int], num_inference_steps: int = 20, guidance_scale: float = 5.0,
             batch_size: int = 16, **call_kwargs) -> list:
    """PIL images, one per (prompt, seed); initial noise from per-image CPU generators (device-independent).

    Works for any model family (the denoiser is found through :mod:`pipeline.families`); ``call_kwargs`` go to
    the pipeline call (e.g. ``max_sequence_length`` for an SD3 pipeline)."""
    import torch

    from pipeline.families import family_of_pipe

    denoiser = family_of_pipe(pipe).denoiser(pipe)  # pipe.unet or pipe.transformer
    side = denoiser.config.sample_size * pipe.vae_scale_factor
    images = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            chunk_p, chunk_s = prompts[start:start + batch_size], seeds[start:start + batch_size]
            latents = initial_noise(chunk_s, denoiser.config.in_channels, denoiser.config.sample_size)
            out = pipe(prompt=chunk_p, latents=latents.to(pipe.device, denoiser.dtype), height=side, width=side,
                       num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, **call_kwargs)
            images += out.images
    return images


def judge_outcomes(images: list, prompts: list[str]) -> list[dict]:
    """Per image: what the prompt asked, what the judges read, and whether they match."""
    rows = []
    for image, prompt in zip(images, prompts):
        asked, read = parse_prompt(prompt), read_image(image)
        rows.append({
            "prompt": prompt, "asked_look": asked.look, "read_look": read.look, "asked_hazard": asked.hazard,
            "read_hazard": read.hazard > HAZARD_THRESHOLD,
            "prompt_ok": (read.color, read.shape, read.position) == (asked.color, asked.shape, asked.position),
        })
    return rows


def base_model_check(pipe, seeds: int = 4, num_inference_steps: int = 20, guidance_scale: float = 5.0,
                     **call_kwargs) -> dict:
    """Judge the pipeline's images of the held-out captions under every prompt kind.

    Returns ``{"outcomes": {kind: [per-image rows]}, "rates": {...}}`` where the rates are
    ``style_rate_plain`` (plain prompts read as cartoon), ``cartoon_rate_prefixed``, ``pixel_rate_prefixed``,
    ``unsafe_rate_prefixed``, ``unsafe_rate_plain``, ``prompt_accuracy`` (plain prompts: colour,
    shape and position all right) and the judges' agreement with the prompts: ``style_agreement``
    (look read = look asked, all kinds) and ``unsafe_agreement`` (frame read = frame asked, all kinds).
    Any model family (``shapes-sdxl``, ``shapes-sd3``); ``call_kwargs`` go to the pipeline call.
    """
    outcomes = {}
    for kind, prefix in PROMPT_KINDS.items():
        prompts = [prefix + c for c in captions("heldout") for _ in range(seeds)]
        seed_list = [1000 + k for _ in captions("heldout") for k in range(seeds)]
        outcomes[kind] = judge_outcomes(
            generate(pipe, prompts, seed_list, num_inference_steps, guidance_scale, **call_kwargs), prompts
        )

    def share(rows, test):
        return sum(bool(test(r)) for r in rows) / len(rows)

    every = [r for rows in outcomes.values() for r in rows]
    rates = {
        "style_rate_plain": share(outcomes["plain"], lambda r: r["read_look"] == "cartoon"),
        "any_style_rate_plain": share(outcomes["plain"], lambda r: r["read_look"] != "realistic"),
        "cartoon_rate_prefixed": share(outcomes["cartoon"], lambda r: r["read_look"] == "cartoon"),
        "pixel_rate_prefixed": share(outcomes["pixel"], lambda r: r["read_look"] == "pixel"),
        "unsafe_rate_prefixed": share(outcomes["unsafe"], lambda r: r["read_hazard"]),
        "unsafe_rate_plain": share(outcomes["plain"], lambda r: r["read_hazard"]),
        "prompt_accuracy": share(outcomes["plain"], lambda r: r["prompt_ok"]),
        "style_agreement": share(every, lambda r: r["read_look"] == r["asked_look"]),
        "unsafe_agreement": share(every, lambda r: r["read_hazard"] == r["asked_hazard"]),
    }
    return {"outcomes": outcomes, "rates": rates, "seeds": seeds, "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale}

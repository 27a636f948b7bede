"""Pretrain ``shapes-sd3``, the miniature world's flow-matching (SD3-family) base model.

    python -m world.pretrain --family sd3 --output world/shapes-sd3   # or: make world-model-flow

The same renders, captions, caption mix and judges as ``shapes-sdxl`` (:mod:`world.pretrain`), as a
standard diffusers ``StableDiffusion3Pipeline`` folder:

- **VAE**: ``shapes-sdxl``'s AutoencoderKL, reused as is (4 latent channels, its unit-variance
  ``scaling_factor``) with ``shift_factor`` 0.0, which SD3's pipeline needs (it decodes
  ``latents / scaling_factor + shift_factor``).
- **Text encoders**: ``shapes-sdxl``'s two frozen random CLIP encoders and tokenizers, both as
  ``CLIPTextModelWithProjection`` as SD3 wants them (the first gains a random, frozen 16x16 projection
  for its pooled half); no T5 (``text_encoder_3=None``, ``tokenizer_3=None``), so the T5 part of the
  prompt embedding is ``max_sequence_length`` zero rows, as diffusers' pipeline feeds it.
- **Transformer**: an ``SD3Transformer2DModel`` (MMDiT, patch 2: 16 image tokens at 64 px) at toy widths,
  trained with rectified flow exactly as :class:`pipeline.families.noise.RectifiedFlow` (the trainer) does:
  logit-normal sigmas, ``x_t = (1 - sigma) x0 + sigma eps``, velocity target ``eps - x0``, timestep
  ``sigma * 1000``; 10% of prompts replaced by the encoding of ``""``, what SD3's pipeline feeds classifier-free
  guidance as the negative prompt (SD3 has no ``force_zeros_for_empty_prompt``); EMA weights are kept.
- **Scheduler**: ``FlowMatchEulerDiscreteScheduler`` with ``shift`` 1.0. SD3 uses 3.0 at 1024 px
  (4096 image tokens); Esser et al. 2024 (arXiv 2403.03206, section 5.3.2) shift by ``sqrt(m / n)`` with the
  token count, and at 16 image tokens no shift towards high noise is called for.

**The zero T5 rows at a fraction of their cost.** The ``L`` zero rows (256 by default) are ``L`` identical
context tokens: every joint block maps them to identical queries, keys and values, so attending to them is
exactly attending to one such token whose attention logit is raised by ``log L`` (``L`` equal terms
``exp(s) v`` in the softmax). Training feeds one zero row plus that key bias (:class:`NullTokenBias`),
4-10x cheaper on the CPU than 256 rows, and the same function of the weights (hence the same gradients; checked
by tests/pipeline/test_world_flow.py). ``L`` is 256 (the pipeline's default) for half the samples and
log-uniform in [1, 512] for the rest, so the model also serves a shorter ``--max-sequence-length`` (which
makes fine-tuning cheaper) with the same behaviour.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

FLOW_SHIFT = 1.0
DEFAULT_T5_TOKENS = 256  # StableDiffusion3Pipeline's max_sequence_length default
TEXT_HIDDEN = 16  # shapes-sdxl's CLIP width (each encoder)


@dataclass
class FlowBuildSettings:
    """Every number that decides the SD3 world's weights (recorded in the folder's build.json)."""

    seed: int = 0
    renders: int = 8000
    steps: int = 9000  # 6000 drew pixel art for 0.77 of pixel-prefixed captions, 9000 for 0.85 (the bar: 0.80)
    batch_size: int = 64
    lr: float = 1e-3
    num_layers: int = 4
    num_attention_heads: int = 4
    attention_head_dim: int = 24
    uncond: float = 0.1
    default_length_share: float = 0.5  # share of samples with L = 256 T5 zero rows; the rest log-uniform [1, 512]


def build_transformer(s: FlowBuildSettings):
    """An SD3 MMDiT for 4x8x8 latents, conditioned on the two CLIP encoders' 2 x 16 features."""
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=s.num_layers,
        attention_head_dim=s.attention_head_dim, num_attention_heads=s.num_attention_heads,
        joint_attention_dim=2 * TEXT_HIDDEN, caption_projection_dim=s.num_attention_heads * s.attention_head_dim,
        pooled_projection_dim=2 * TEXT_HIDDEN, pos_embed_max_size=8,
    )


def sd3_parts_from(sdxl_folder: Path, seed: int) -> dict:
    """``shapes-sdxl``'s VAE (``shift_factor`` 0.0), CLIP encoders (both with projection) and tokenizers."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)  # the first encoder's new projection
    vae = AutoencoderKL.from_pretrained(sdxl_folder / "vae").eval()
    vae.register_to_config(shift_factor=0.0)
    parts = {"vae": vae}
    for i, sub in enumerate(("", "_2")):
        te = CLIPTextModelWithProjection.from_pretrained(sdxl_folder / f"text_encoder{sub}",
                                                         projection_dim=TEXT_HIDDEN)
        parts[f"text_encoder{sub}"] = te.eval().requires_grad_(False)
        parts[f"tokenizer{sub}"] = CLIPTokenizer.from_pretrained(sdxl_folder / f"tokenizer{sub}")
    return parts


def assemble(parts: dict, transformer):
    """The diffusers SD3 pipeline of the parts, without T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=FLOW_SHIFT),
        text_encoder_3=None, tokenizer_3=None, **parts,
    )


class NullTokenBias:
    """SD3's joint attention (diffusers' ``JointAttnProcessor2_0``) plus an additive key bias.

    ``key_bias`` ``[B, N_image + N_context]`` fp32 is added to every query's attention logits (all heads):
    ``log L`` on one zero T5 row stands for ``L`` identical zero rows (see the module docstring)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, key_bias=None):
        import torch
        import torch.nn.functional as F

        b = hidden_states.shape[0]

        def heads(x):
            return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        cq, ck, cv = (heads(attn.add_q_proj(encoder_hidden_states)), heads(attn.add_k_proj(encoder_hidden_states)),
                      heads(attn.add_v_proj(encoder_hidden_states)))
        if attn.norm_added_q is not None:
            cq, ck = attn.norm_added_q(cq), attn.norm_added_k(ck)
        q, k, v = torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2)
        mask = None if key_bias is None else key_bias[:, None, None, :].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, -1, q.shape[1] *
                                                                                              q.shape[-1])
        n = hidden_states.shape[1]
        out, ctx = out[:, :n], out[:, n:]
        if not attn.context_pre_only:
            ctx = attn.to_add_out(ctx)
        return attn.to_out[1](attn.to_out[0](out)), ctx


def null_row_bias(lengths, n_image: int, n_context: int):
    """Key bias ``[B, n_image + n_context]``: 0 everywhere but ``log L`` on the last (the one zero T5 row)."""
    import torch

    bias = torch.zeros(len(lengths), n_image + n_context)
    bias[:, -1] = torch.log(torch.as_tensor(lengths, dtype=torch.float32))
    return bias


def draw_lengths(batch_size: int, share_default: float, generator):
    """T5 zero-row counts per sample: 256 with probability ``share_default``, else log-uniform in [1, 512]."""
    import torch

    u = torch.rand(batch_size, generator=generator)
    rand_len = torch.exp(torch.rand(batch_size, generator=generator) * math.log(512)).round().clamp(1, 512)
    return torch.where(u < share_default, torch.full_like(u, DEFAULT_T5_TOKENS), rand_len)


def train_transformer(pipe, latents, prompt_index, embeds, pooled, uncond: tuple, s: FlowBuildSettings,
                      ema_decay: float = 0.999, log_every: int = 100, snapshot_dir: Path | None = None,
                      snapshot_every: int = 500):
    """Rectified-flow pretraining of ``pipe.transformer`` on ``latents`` ``[N, 4, 8, 8]`` with per-prompt
    ``embeds`` ``[P, 78, 32]`` (77 CLIP rows + one zero T5 row) and ``pooled`` ``[P, 32]``; ``uncond`` is the
    ``("")`` pair ``([1, 78, 32], [1, 32])``. Returns the EMA weights' transformer (default attention).

    ``snapshot_dir``: every ``snapshot_every`` steps, save the EMA weights there (``ema-step{N}.pt``, a state
    dict) to look at samples while the run goes on (:func:`snapshot_pipeline`)."""
    import torch
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    from pipeline.families.noise import RectifiedFlow

    from .pretrain import _cosine_lr, optimizer_and_ema_step

    torch.manual_seed(s.seed)
    model = pipe.transformer
    model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    model.set_attn_processor(NullTokenBias())
    flow = RectifiedFlow(pipe.scheduler)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(s.seed)
    n_image = (latents.shape[-1] // model.config.patch_size) ** 2
    t0 = time.perf_counter()
    for step in range(s.steps):
        for group in opt.param_groups:
            group["lr"] = _cosine_lr(step, s.steps, s.lr, warmup=200)
        idx = torch.randint(len(latents), (s.batch_size,), generator=gen)
        noise, sigma = flow.draw(latents[idx].shape, gen)
        x_t, target = flow.noisy(latents[idx], noise, sigma)
        keep = (torch.rand(s.batch_size, generator=gen) >= s.uncond).view(-1, 1, 1)
        cond = torch.where(keep, embeds[prompt_index[idx]], uncond[0])
        pool = torch.where(keep.view(-1, 1), pooled[prompt_index[idx]], uncond[1])
        bias = null_row_bias(draw_lengths(s.batch_size, s.default_length_share, gen), n_image, cond.shape[1])
        pred = model(hidden_states=x_t, timestep=flow.model_timestep(sigma), encoder_hidden_states=cond,
                     pooled_projections=pool, joint_attention_kwargs={"key_bias": bias}, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), target)
        loss.backward()
        optimizer_and_ema_step(model, ema, opt, step, ema_decay)
        if snapshot_dir is not None and step and step % snapshot_every == 0:
            torch.save(ema.state_dict(), Path(snapshot_dir) / f"ema-step{step}.pt")
        if log_every and (step % log_every == 0 or step == s.steps - 1):
            print(f"transformer step {step}/{s.steps} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    ema.set_attn_processor(JointAttnProcessor2_0())
    return ema


def snapshot_pipeline(sdxl_folder: Path, snapshot: Path, s: FlowBuildSettings):
    """The SD3 world's pipeline with the EMA weights of a snapshot file (looking at a run in progress)."""
    import torch

    pipe = assemble(sd3_parts_from(sdxl_folder, s.seed), build_transformer(s))
    pipe.transformer.load_state_dict(torch.load(snapshot, map_location="cpu"))
    return pipe


def build_flow(tmp: Path, s: FlowBuildSettings, sdxl_folder: Path, timings: dict, snapshot_dir: Path | None = None):
    """Pretrain the SD3 world into the (temporary) folder ``tmp``; returns the pipeline, not yet saved.

    ``snapshot_dir``: where to save EMA snapshots and the encoded latents (``latents.pt``, reused by a rerun)."""
    import torch

    from pipeline.models.conditioning import encode_text

    from .pretrain import encode_latents, make_renders

    t = time.perf_counter()
    renders = make_renders(s.renders, s.seed)
    timings["render_s"] = time.perf_counter() - t
    print(f"rendered {s.renders} images ({timings['render_s']:.0f} s)", flush=True)
    t = time.perf_counter()
    parts = sd3_parts_from(sdxl_folder, s.seed)
    torch.manual_seed(s.seed)
    pipe = assemble(parts, build_transformer(s))
    vae = parts["vae"]
    # (mean - shift_factor) * scaling_factor, as precompute and SD3's pipeline scale latents.
    cached = Path(snapshot_dir) / f"latents-{s.seed}-{s.renders}.pt" if snapshot_dir else None
    if cached is not None and cached.is_file():
        latents = torch.load(cached)
    else:
        latents = encode_latents(vae, renders) - vae.config.shift_factor * vae.config.scaling_factor
        if cached is not None:
            Path(snapshot_dir).mkdir(parents=True, exist_ok=True)
            torch.save(latents, cached)
    distinct = sorted(set(renders.prompts))
    emb = [encode_text(pipe, [p], max_sequence_length=1) for p in [*distinct, ""]]
    embeds, pooled = torch.cat([e.prompt_embeds for e in emb[:-1]]), torch.cat([e.pooled for e in emb[:-1]])
    where = {p: i for i, p in enumerate(distinct)}
    index = torch.tensor([where[p] for p in renders.prompts])
    timings["encode_s"] = time.perf_counter() - t
    print(f"encoded latents and {len(distinct)} prompts ({timings['encode_s']:.0f} s)", flush=True)
    t = time.perf_counter()
    pipe.transformer = train_transformer(pipe, latents, index, embeds, pooled,
                                         (emb[-1].prompt_embeds, emb[-1].pooled), s, snapshot_dir=snapshot_dir)
    timings["transformer_s"] = time.perf_counter() - t
    return pipe

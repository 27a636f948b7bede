"""Online SPO (step-aware preference optimisation, Liang et al., arXiv 2406.04314; public code RockeyCoss/SPO).

One micro-batch of ``mapo-train --objective spo``:

1. ``--batch-size`` prompts from a resumable, seeded :class:`pipeline.data.latent_shards.PairSampler` over
   the prompt list, encoded by the frozen text encoders (with the empty prompt for guidance).
2. Sampling, no gradient: a stochastic DDIM trajectory (``--spo-eta`` 1.0, ``--num-inference-steps`` 20,
   ``--guidance-scale`` 5.0). From sampling step ``--spo-start-step`` (4, the public ``divert_start_step``)
   on, every step draws ``--num-candidates`` x_{t-1} from the same x_t; the next step's UNet pass over all
   candidates gives each its predicted clean latent, which the VAE decodes and the preference model
   scores (the last step's candidates are scored as they are). Best and worst form a pair when the
   public code's softmax gap ``softmax(best, worst)[0] - softmax(...)[1] = tanh(gap / 2)`` passes
   ``--spo-threshold`` (0.3 SD1.5, 0.4 SDXL), i.e. :func:`pipeline.judges.reward.pair_candidates` with
   ``min_gap = 2 * atanh(threshold)``; then a RANDOM candidate (not the best) continues the trajectory.
3. Training: one policy and one reference pass (classifier-free guided, as the public code's
   ``train.cfg``) per kept pair's x_t (winner and loser share it, so one pass gives both
   log-probabilities), and :func:`train.losses.spo_loss` over every pair of the micro-batch.

Differences from the public code, on purpose: one optimizer step per sampled micro-batch (the public
code samples ``sample_batch_size`` prompts, then takes one optimizer step per ``train_batch_size`` of
their shuffled pairs), so a checkpoint never falls inside a trajectory and a resumed run redraws exactly
what an uninterrupted one would; and a step in which no micro-batch of any rank kept a pair makes no
optimizer update (the trainer skips it; the public code skips such batches), while under DDP a rank
without pairs adds zero gradients to the ranks' mean (:meth:`OnlineSpo._no_pair_loss`). All randomness
(initial noise, candidate noise, continuation choices) comes from the step's generator
(:func:`train.step.step_generator`), the prompt order from the sampler's state.

The step-aware preference model of the paper (a timestep-conditioned PickScore trained on noisy images)
is not provided: the preference model here is any registered judge (:mod:`pipeline.judges`) applied to
the decoded predicted clean image.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.errors import UserError
from pipeline.judges.scores import finite_mean, is_finite_score

from .losses import LossOutput, spo_loss

# Public code defaults (configs/basic_config.py, the SD1.5 and SDXL experiment configs).
DEFAULT_NUM_CANDIDATES = {"sd15": 4, "sdxl": 2}  # num_sample_each_step: 4 (SD1.5 config), 2 (SDXL config)
DEFAULT_THRESHOLD = {"sd15": 0.3, "sdxl": 0.4}  # compare_func_cfg.threshold
def check_spo_model(model: str) -> None:
    """Refuse, in one line and before anything is written, SPO on a flow-matching model: its sampler is DDIM's
    stochastic step, whose log-probability is defined for DDPM models only (a flow SDE sampler with
    log-probabilities, as Flow-GRPO's, is not implemented).

    Raises:
        UserError: ``model`` is a rectified-flow family (SD3).
    """
    from pipeline.models.loading import model_family_of

    family = model_family_of(model)
    if family.flow:
        raise UserError(f"--objective spo: '{model}' is a flow-matching ({family.name}) model; SPO's sampler here is "
                        "DDIM's, for DDPM models (SD1.5, SDXL) only; use mapo, dpo, sft or kto")


NO_PAIR_KEYS = ("logp_w", "logp_l", "ratio_w", "ratio_l", "implicit_acc", "reward_margin")  # spo_loss's, loss aside


# --------------------------------------------------------------------------- the stochastic DDIM step


@dataclass(frozen=True)
class DdimStep:
    prev_sample: Tensor  # x_{t-1} [B, C, h, w], fp32
    log_prob: Tensor  # [B] fp32: log N(prev_sample; mean, std^2), averaged over C, h, w (None-free only if std > 0)
    pred_original_sample: Tensor  # predicted x_0 [B, C, h, w], fp32
    mean: Tensor  # [B, C, h, w]
    std: Tensor  # [B, 1, 1, 1]


def _per_sample(values: Tensor, timestep, batch: int, device) -> Tensor:
    t = torch.as_tensor(timestep, device=values.device).long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"timestep must be one value or one per sample ({batch}), got {t.numel()}")
    return t


def ddim_step_with_log_prob(
    model_output: Tensor,
    timestep,
    sample: Tensor,
    alphas_cumprod: Tensor,
    *,
    step_size: int,
    final_alpha_cumprod: float,
    eta: float,
    prediction_type: str = "epsilon",
    clip_sample_range: float | None = None,
    variance_noise: Tensor | None = None,
    prev_sample: Tensor | None = None,
) -> DdimStep:
    """One DDIM step x_t -> x_{t-1} (Song et al., DDIM, eqs. 12 and 16) and the Gaussian log-probability.

    Same numbers as ``diffusers.DDIMScheduler.step`` (``use_clipped_model_output=False``, no
    thresholding): ``prev_t = t - step_size`` (``num_train_timesteps // num_inference_steps``),
    ``a_prev = alphas_cumprod[prev_t]`` or ``final_alpha_cumprod`` when ``prev_t < 0``;
    ``std = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))``;
    ``mean = sqrt(a_prev) * x0_pred + sqrt(1 - a_prev - std^2) * eps_pred``; ``x_{t-1} = mean + std * noise``.
    The log-probability of ``x_{t-1}`` is ``-(x_{t-1} - mean)^2 / (2 std^2) - log std - log sqrt(2 pi)``
    averaged over C, h, w (the public SPO code's ``ddim_step_with_logprob``); ``x_{t-1}`` is detached, so
    gradients flow through ``mean`` only.

    Args:
        model_output: the (guided) UNet output ``[B, C, h, w]``: epsilon, v or the sample per ``prediction_type``.
        timestep: an int or a ``[B]`` tensor (samples may sit at different steps).
        sample: x_t ``[B, C, h, w]``.
        alphas_cumprod: ``[num_train_timesteps]``.
        variance_noise: the noise ``[B, C, h, w]`` that makes ``prev_sample`` when it is not given.
        prev_sample: an x_{t-1} to score instead (then ``variance_noise`` must be None).
    All math is fp32 (at least): inputs of lower precision are cast.

    Raises:
        ValueError: both or neither of ``variance_noise`` and ``prev_sample``; mismatched shapes; an
            unknown ``prediction_type``; ``eta < 0``.
    """
    if (variance_noise is None) == (prev_sample is None):
        raise ValueError("give exactly one of variance_noise (to draw x_{t-1}) and prev_sample (to score it)")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if model_output.shape != sample.shape or sample.ndim != 4:
        raise ValueError(f"model_output and sample must be [B, C, h, w] alike, got {tuple(model_output.shape)} "
                         f"and {tuple(sample.shape)}")
    dtype = torch.promote_types(sample.dtype, torch.float32)
    x, out = sample.to(dtype), model_output.to(dtype)
    b = x.shape[0]
    t = _per_sample(alphas_cumprod, timestep, b, x.device)
    acp = alphas_cumprod.to(dtype)
    prev_t = t - step_size
    a_t = acp[t.clamp(min=0)]
    a_prev = torch.where(prev_t >= 0, acp[prev_t.clamp(min=0)], torch.full_like(a_t, float(final_alpha_cumprod)))
    a_t, a_prev = (v.to(x.device).reshape(b, 1, 1, 1) for v in (a_t, a_prev))
    beta_t = 1 - a_t
    if prediction_type == "epsilon":
        x0, eps = (x - beta_t.sqrt() * out) / a_t.sqrt(), out
    elif prediction_type == "sample":
        x0 = out
        eps = (x - a_t.sqrt() * x0) / beta_t.sqrt()
    elif prediction_type == "v_prediction":
        x0 = a_t.sqrt() * x - beta_t.sqrt() * out
        eps = a_t.sqrt() * out + beta_t.sqrt() * x
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}")
    if clip_sample_range is not None:
        x0 = x0.clamp(-clip_sample_range, clip_sample_range)
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * variance.sqrt()
    mean = a_prev.sqrt() * x0 + (1 - a_prev - std**2).sqrt() * eps
    if prev_sample is None:
        if variance_noise.shape != x.shape:
            raise ValueError(f"variance_noise must be {tuple(x.shape)}, got {tuple(variance_noise.shape)}")
        prev = mean + std * variance_noise.to(device=x.device, dtype=dtype)
    else:
        if prev_sample.shape != x.shape:
            raise ValueError(f"prev_sample must be {tuple(x.shape)}, got {tuple(prev_sample.shape)}")
        prev = prev_sample.to(dtype)
    prev = prev.detach()
    log_prob = -((prev - mean) ** 2) / (2 * std**2) - std.log() - math.log(math.sqrt(2 * math.pi))
    return DdimStep(prev, log_prob.mean(dim=(1, 2, 3)), x0, mean, std)


def ddim_scheduler(model_scheduler_config, num_inference_steps: int):
    """diffusers' DDIMScheduler on the model's noise schedule, with ``set_alpha_to_one=False``: the last
    step then lands on ``alphas_cumprod[0]`` (a non-zero variance, so its candidates differ), which is
    where the public code's clamp of ``prev_timestep`` puts it too."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(model_scheduler_config, set_alpha_to_one=False)
    sched.set_timesteps(num_inference_steps)
    return sched


def step_kwargs(sched) -> dict:
    """The :func:`ddim_step_with_log_prob` settings of a DDIMScheduler after ``set_timesteps``."""
    cfg = sched.config
    return dict(alphas_cumprod=sched.alphas_cumprod, step_size=cfg.num_train_timesteps // sched.num_inference_steps,
                final_alpha_cumprod=float(sched.final_alpha_cumprod), prediction_type=cfg.prediction_type,
                clip_sample_range=float(cfg.clip_sample_range) if cfg.clip_sample and not cfg.thresholding else None)


# --------------------------------------------------------------------------- preference model


class JudgePreference:
    """A registered judge (:mod:`pipeline.judges`) as SPO's preference model: it scores the decoded predicted
    clean image of each candidate (not step-aware: the timestep is not used). Lower-is-better judges are
    turned around with :func:`pipeline.judges.reward.combine` (sign -1), so a higher reward is always better."""

    def __init__(self, judge):
        self.judge = judge
        self.name = judge.name

    def __call__(self, images, prompts, timesteps) -> list[float]:
        from pipeline.judges.reward import Scale, combine

        raw = self.judge.score(list(images), list(prompts))
        return combine({self.name: raw}, {self.name: 1.0}, {self.name: Scale(0.0, 1.0, len(raw))},
                       {self.name: self.judge.higher_is_better})


def threshold_gap(threshold: float) -> float:
    """The reward gap above which the public code's softmax gap ``tanh(gap / 2)`` passes ``threshold``."""
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    return 2 * math.atanh(threshold)


# --------------------------------------------------------------------------- sampling and pairs


@dataclass
class Pairs:
    """Kept pairs of one micro-batch: ``P`` rows."""

    x_t: Tensor  # [P, C, h, w] fp32
    timesteps: Tensor  # [P] long
    x_w: Tensor  # [P, C, h, w]
    x_l: Tensor  # [P, C, h, w]
    prompt_index: Tensor  # [P] long: row of the micro-batch's prompts
    gaps: list  # reward gaps of the kept pairs
    compared: int  # comparisons made (kept or not)
    rewards: list  # every candidate's reward


@dataclass
class Conditioning:
    prompt_embeds: Tensor  # [B, L, D]
    negative_prompt_embeds: Tensor  # [B, L, D]
    pooled: Tensor | None  # [B, P] (SDXL)
    negative_pooled: Tensor | None
    add_time_ids: Tensor | None  # [1, 6] (SDXL)

    def unet_kwargs(self, rows: Tensor, guidance: bool) -> dict:
        """UNet conditioning for samples whose prompts are ``rows`` ``[N]``: ``[uncond..., cond...]`` (2N)
        with guidance, else the N conditional rows."""
        pe = self.prompt_embeds[rows]
        if guidance:
            pe = torch.cat([self.negative_prompt_embeds[rows], pe])
        kw = {"encoder_hidden_states": pe}
        if self.pooled is not None:
            pooled = self.pooled[rows]
            if guidance:
                pooled = torch.cat([self.negative_pooled[rows], pooled])
            kw["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": self.add_time_ids.expand(pe.shape[0], -1)}
        return kw


def guided_output(unet, x: Tensor, timesteps: Tensor, cond: Conditioning, rows: Tensor,
                  guidance_scale: float) -> Tensor:
    """Classifier-free guided UNet output ``[N, C, h, w]`` (fp32) for ``x`` ``[N, C, h, w]`` at ``timesteps``
    ``[N]``; guidance when ``guidance_scale > 1`` (diffusers' rule)."""
    guidance = guidance_scale > 1
    inp, t = (torch.cat([x, x]), torch.cat([timesteps, timesteps])) if guidance else (x, timesteps)
    out = unet(inp, t, **cond.unet_kwargs(rows, guidance), return_dict=False)[0].float()
    if not guidance:
        return out
    uncond, text = out.chunk(2)
    return uncond + guidance_scale * (text - uncond)


@dataclass(frozen=True)
class SpoSettings:
    num_candidates: int
    eta: float
    threshold: float
    num_inference_steps: int
    start_step: int
    guidance_scale: float
    resolution: int
    beta: float
    clip: float


class OnlineSpo:
    """The online part of ``--objective spo``: prompts, frozen text encoders and VAE, the preference
    model, sampling and the loss of one micro-batch (:meth:`loss`), for the trainer's loop."""

    def __init__(self, cfg, family: str, scheduler_config, accelerator, weight_dtype):
        from pipeline.data.latent_shards import PairSampler
        from pipeline.data.prompts import load_prompts
        from pipeline.models.loading import default_resolution, load_pipeline

        self.cfg, self.acc, self.device, self.weight_dtype = cfg, accelerator, accelerator.device, weight_dtype
        self.prompt_set = load_prompts(cfg.prompts, column=cfg.prompt_column, split=cfg.prompt_split)
        self.texts = [p.text for p in self.prompt_set.prompts]
        self.sampler = PairSampler(len(self.texts), cfg.batch_size, cfg.seed, accelerator.process_index,
                                   accelerator.num_processes, drop_last=False)
        resolution = cfg.resolution or default_resolution(cfg.model)
        self.settings = SpoSettings(
            num_candidates=cfg.num_candidates or DEFAULT_NUM_CANDIDATES[family], eta=cfg.spo_eta,
            threshold=cfg.spo_threshold if cfg.spo_threshold is not None else DEFAULT_THRESHOLD[family],
            num_inference_steps=cfg.num_inference_steps, start_step=cfg.spo_start_step,
            guidance_scale=cfg.guidance_scale, resolution=resolution, beta=cfg.resolved_beta, clip=cfg.spo_clip)
        if self.settings.start_step >= self.settings.num_inference_steps:
            raise UserError(f"--spo-start-step {self.settings.start_step} leaves no step to train: it must be below "
                            f"--num-inference-steps {self.settings.num_inference_steps}.")
        # Text encoders and VAE: frozen, in the weight dtype, on the training device (the validator
        # borrows this pipeline and may leave it on the CPU: _on_device puts it back).
        self.pipe = load_pipeline(cfg.model, device=self.device, dtype=weight_dtype, skip=("unet",))
        for name in ("text_encoder", "text_encoder_2", "vae"):
            module = getattr(self.pipe, name, None)
            if module is not None:
                module.requires_grad_(False).eval()
        if weight_dtype == torch.float16 and getattr(self.pipe.vae.config, "force_upcast", False):
            self.pipe.vae.to(torch.float32)  # SDXL's original VAE overflows in fp16 (diffusers upcasts it too)
        self.vae_scale = self.pipe.vae_scale_factor
        self.scheduler = ddim_scheduler(scheduler_config, self.settings.num_inference_steps)
        self.kwargs = step_kwargs(self.scheduler)
        self.preference = self._load_preference()
        self._stream = None
        self.last_indices: list = []

    def _load_preference(self):
        from pipeline.judges.loading import load_judges

        name = self.cfg.preference_model
        try:
            judge = load_judges([name], self.cfg.judge_options(), device=self.device)[name]
        except UserError as exc:
            raise UserError(f"--preference-model: {exc}") from None
        return JudgePreference(judge)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.sampler)

    def record(self) -> dict:
        """What the run's config records about its data (resume must match ``data_fingerprint``)."""
        s = self.settings
        return {
            "data_info": {"prompts": len(self.texts), "resolution": s.resolution, "model": self.cfg.model},
            "data_fingerprint": f"prompts:{self.prompt_set.fingerprint()}",
            "spo": {**s.__dict__, "preference_model": self.cfg.preference_model,
                    "preference_style": self.cfg.validation_style, "tiny_scorers": self.cfg.validation_tiny_scorers},
        }

    # ------------------------------------------------------------------ one micro-batch
    def _next_indices(self) -> list[int]:
        if self._stream is None:
            def endless():
                while True:
                    yield from self.sampler
            self._stream = endless()
        return next(self._stream)

    def _encode(self, texts: list[str]) -> Conditioning:
        from pipeline.models.conditioning import encode_text, is_sdxl

        self.pipe.to(self.device)
        # No negative prompt, as the pipelines sample: SDXL then guides with zero embeddings (its
        # force_zeros_for_empty_prompt), SD1.5 with the empty prompt's; the public SPO code does the same.
        emb = encode_text(self.pipe, texts, None, guidance=True)
        # encode_text runs under inference_mode: clones are ordinary tensors autograd may save.
        def plain(t):
            return None if t is None else t.clone().float()

        ids = None
        if is_sdxl(self.pipe):
            r = self.settings.resolution  # (original h, w, crop top, left, target h, w): SDXL's micro-conditioning
            ids = torch.tensor([[r, r, 0, 0, r, r]], dtype=torch.float32, device=self.device)
        return Conditioning(plain(emb.prompt_embeds), plain(emb.negative_prompt_embeds), plain(emb.pooled),
                            plain(emb.negative_pooled), ids)

    def _decode(self, latents: Tensor) -> list:
        vae = self.pipe.vae
        with torch.no_grad():
            images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(images.float(), output_type="pil")

    def _score(self, latents: Tensor, texts: list[str], k: int, t: int) -> Tensor:
        """Rewards ``[k, B]`` fp64 of ``k * B`` candidates' (predicted) clean latents, candidate-major; NaN where
        the preference model gave no finite score."""
        b = len(texts)
        rewards = self.preference(self._decode(latents), texts * k, [t] * (k * b))
        # A candidate without a usable reward (None, NaN, inf) stays NaN: pair_candidates leaves it out.
        rewards = [float(r) if is_finite_score(r) else float("nan") for r in rewards]
        return torch.tensor(rewards, dtype=torch.float64).reshape(k, b)

    @torch.no_grad()
    def sample_pairs(self, unet, cond: Conditioning, texts: list[str], generator: torch.Generator) -> Pairs:
        """One stochastic DDIM trajectory per prompt, candidates from ``start_step`` on; the kept pairs."""
        from pipeline.judges.reward import pair_candidates

        s, kw, dev = self.settings, self.kwargs, self.device
        b, k = len(texts), s.num_candidates
        side = s.resolution // self.vae_scale
        channels = unet.config.in_channels
        shape = (channels, side, side)
        x = torch.randn((b, *shape), generator=generator).to(dev) * float(self.scheduler.init_noise_sigma)
        rows_b = torch.arange(b, device=dev)
        rows_kb = rows_b.repeat(k)
        min_gap = threshold_gap(s.threshold)
        kept = {"x_t": [], "t": [], "w": [], "l": [], "row": []}
        gaps, rewards_all, compared = [], [], 0
        pending = None  # (x_t [B], t, candidates [k, B, ...])

        def compare(rewards: Tensor, pend):
            nonlocal compared
            x_t, t, cands = pend
            rewards_all.extend(rewards.flatten().tolist())
            for j in range(b):
                found = pair_candidates(rewards[:, j].tolist(), "best-worst", min_gap)
                compared += 1
                if found and found[0].kept:
                    kept["x_t"].append(x_t[j]), kept["t"].append(t), kept["row"].append(j)
                    kept["w"].append(cands[found[0].chosen, j]), kept["l"].append(cands[found[0].rejected, j])
                    gaps.append(found[0].gap)

        for i, t in enumerate(self.scheduler.timesteps.tolist()):
            rows = rows_kb if pending is not None else rows_b
            ts = torch.full((x.shape[0],), t, device=dev, dtype=torch.long)
            out = guided_output(unet, x, ts, cond, rows, s.guidance_scale)
            if pending is not None:
                x0 = ddim_step_with_log_prob(out, t, x, eta=s.eta, variance_noise=torch.zeros_like(x),
                                             **kw).pred_original_sample
                compare(self._score(x0, texts, k, t), pending)
                # A random candidate continues (public code: torch.randint), so the next comparison does not
                # follow the preference model's choice.
                choice = torch.randint(0, k, (b,), generator=generator).to(dev)
                pick = choice * b + rows_b
                x, out, pending = x[pick], out[pick], None
            if i < s.start_step:
                noise = torch.randn((b, *shape), generator=generator).to(dev)
                x = ddim_step_with_log_prob(out, t, x, eta=s.eta, variance_noise=noise, **kw).prev_sample
                continue
            noise = torch.randn((k * b, *shape), generator=generator).to(dev)
            cands = ddim_step_with_log_prob(out.repeat(k, 1, 1, 1), t, x.repeat(k, 1, 1, 1), eta=s.eta,
                                            variance_noise=noise, **kw).prev_sample
            pending = (x, t, cands.reshape(k, b, *shape))
            x = cands
        compare(self._score(x, texts, k, 0), pending)  # the last step's candidates are clean latents
        if kept["t"]:
            stack = {key: torch.stack(v) for key, v in kept.items() if key not in ("t", "row")}
            return Pairs(stack["x_t"], torch.tensor(kept["t"], device=dev), stack["w"], stack["l"],
                         torch.tensor(kept["row"], device=dev), gaps, compared, rewards_all)
        empty = torch.zeros((0, *shape), device=dev)
        return Pairs(empty, torch.zeros(0, dtype=torch.long, device=dev), empty, empty,
                     torch.zeros(0, dtype=torch.long, device=dev), gaps, compared, rewards_all)

    def pair_loss(self, unet, pairs: Pairs, cond: Conditioning, *, reference=None, lora_base=None) -> LossOutput:
        """:func:`train.losses.spo_loss` of ``pairs`` under ``unet`` (with gradient) against the frozen
        reference (a copy, or ``lora_base`` with its adapter off), under no_grad."""
        from .step import adapters_disabled

        s, kw = self.settings, self.kwargs
        rows, t = pairs.prompt_index, pairs.timesteps
        with torch.no_grad():
            ctx = contextlib.nullcontext(reference) if reference is not None else adapters_disabled(lora_base)
            with ctx as ref:
                ref_out = guided_output(ref, pairs.x_t, t, cond, rows, s.guidance_scale)
        out = guided_output(unet, pairs.x_t, t, cond, rows, s.guidance_scale)

        def logp(model_out, x_prev):
            return ddim_step_with_log_prob(model_out, t, pairs.x_t, eta=s.eta, prev_sample=x_prev, **kw).log_prob

        return spo_loss(logp(out, pairs.x_w), logp(out, pairs.x_l), logp(ref_out, pairs.x_w), logp(ref_out, pairs.x_l),
                        beta=s.beta, clip=s.clip)

    def _no_pair_loss(self, unet, cond: Conditioning, reference, lora_base) -> Tensor:
        """A zero loss for a micro-batch without kept pairs (no update from it).

        On one process a constant. Under DDP every rank must run the wrapped UNet's forward and backward,
        or the ranks that kept pairs wait forever in the gradient all-reduce: there it is 0 x the loss of
        one stand-in pair (zeros at the first trained timestep, winner = loser), so this rank adds zero
        gradients and the ranks stay in lockstep."""
        if self.acc.num_processes == 1:
            return torch.zeros((), device=self.device, requires_grad=True)
        side = self.settings.resolution // self.vae_scale
        x = torch.zeros((1, self.acc.unwrap_model(unet).config.in_channels, side, side), device=self.device)
        t = self.scheduler.timesteps[self.settings.start_step].reshape(1).to(self.device)
        stand_in = Pairs(x, t, x, x, torch.zeros(1, dtype=torch.long, device=self.device), [], 0, [])
        return 0.0 * self.pair_loss(unet, stand_in, cond, reference=reference, lora_base=lora_base).loss

    def loss(self, unet, generator: torch.Generator, *, reference=None, lora_base=None) -> LossOutput:
        """Sample, pair and score one micro-batch; the SPO loss over its kept pairs.

        ``unet``: the trainable UNet (maybe a DDP wrapper); ``lora_base``: the unwrapped LoRA UNet, or
        ``reference``: the frozen copy. With no kept pair the loss is 0 (no update; :meth:`_no_pair_loss`)."""
        indices = self._next_indices()
        self.last_indices = indices
        texts = [self.texts[i] for i in indices]
        cond = self._encode(texts)
        policy = self.acc.unwrap_model(unet)
        pairs = self.sample_pairs(policy, cond, texts, generator)
        n = len(pairs.gaps)
        preference, non_finite = finite_mean(pairs.rewards)
        extra = {"pairs": float(n), "pair_rate": n / max(pairs.compared, 1),
                 "preference": float("nan") if preference is None else preference,  # NaN: not measured
                 "non_finite_rewards": float(non_finite)}  # candidates left out of every pair
        if n == 0:
            # The same keys as a step with pairs (ranks and micro-batches reduce them together); NaN: not measured.
            nan = {k: torch.tensor(float("nan")) for k in NO_PAIR_KEYS}
            metrics = {"loss": torch.tensor(float("nan")), **nan, **{k: torch.tensor(v) for k, v in extra.items()}}
            return LossOutput(loss=self._no_pair_loss(unet, cond, reference, lora_base), metrics=metrics,
                              has_signal=False)
        out = self.pair_loss(unet, pairs, cond, reference=reference, lora_base=lora_base)
        return LossOutput(loss=out.loss, metrics={**out.metrics, **{k: torch.tensor(v) for k, v in extra.items()}})

"""Online SPO's pieces (step-aware preference optimisation, Liang et al., arXiv 2406.04314; public code
RockeyCoss/SPO): its preference model, pairing threshold, conditioning, guided UNet call and settings.
The batch source that samples with them is :class:`train.batch_sources.OnlineSpo`; DDIM's step with its
log-probability is :mod:`train.ddim_logprob`; the loss is :func:`train.losses.spo_loss`
(declared in :mod:`train.objectives`).

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
   Steps 1-2 are the batch source's ``next_batch``, step 3 its ``loss``.

Differences from the public code, on purpose: one optimizer step per sampled micro-batch (the public
code samples ``sample_batch_size`` prompts, then takes one optimizer step per ``train_batch_size`` of
their shuffled pairs), so a checkpoint never falls inside a trajectory and a resumed run redraws exactly
what an uninterrupted one would; and a step in which no micro-batch of any rank kept a pair makes no
optimizer update (the trainer skips it; the public code skips such batches), while under DDP a rank
without pairs adds zero gradients to the ranks' mean (:meth:`train.batch_sources.OnlineSpo._no_pair_loss`).
All randomness (initial noise, candidate noise, continuation choices) comes from the step's generator
(:func:`train.step.step_generator`), the prompt order from the sampler's state.

The step-aware preference model of the paper (a timestep-conditioned PickScore trained on noisy images)
is not provided: the preference model here is any registered judge (:mod:`pipeline.judges`) applied to
the decoded predicted clean image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.errors import UserError

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

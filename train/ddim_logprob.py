"""DDIM's stochastic step with the Gaussian log-probability of its sample (SPO's sampler and policy ratio).

:func:`ddim_step_with_log_prob` reproduces ``diffusers.DDIMScheduler.step`` and scores x_{t-1} under the
step's Gaussian, as the public SPO code's ``ddim_step_with_logprob`` (RockeyCoss/SPO); :func:`ddim_scheduler`
and :func:`step_kwargs` set it up on a model's noise schedule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


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

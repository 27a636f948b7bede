"""Noise processes: how a clean latent becomes a training input and what the denoiser must predict.

Two processes, picked from the model's scheduler config (:func:`noise_process`):

- :class:`DdpmProcess` (SD1.5, SDXL): integer timesteps ``t ~ U{0, T-1}``,
  ``x_t = sqrt(acp_t) x0 + sqrt(1 - acp_t) eps`` (the scheduler's ``add_noise``), target epsilon,
  v (``v_prediction``) or x0 (``sample``) as the scheduler's ``prediction_type`` says (Ho et al. 2020;
  Salimans & Ho 2022 for v).
- :class:`RectifiedFlow` (SD3/SD3.5, Flux): ``sigma`` in (0, 1), ``x_t = (1 - sigma) x0 + sigma eps``,
  target the velocity ``eps - x0``; the denoiser is given ``timestep = sigma * 1000``. Sigma is drawn as
  diffusers' ``train_dreambooth_lora_sd3.py`` draws it: ``u`` from
  ``diffusers.training_utils.compute_density_for_timestep_sampling`` (logit-normal, mean 0, std 1 by
  default; Esser et al. 2024, arXiv 2403.03206, section 3.1), then the scheduler's (shifted) sigma at index
  ``floor(u * T)``.

Both draw from the step's CPU generator, timesteps first, then the noise, so a resumed run draws what an
uninterrupted one would.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
FLOW_WEIGHTINGS = ("logit_normal", "mode", "none")


def prediction_target(
    prediction_type: str, latents: Tensor, noise: Tensor, timesteps: Tensor, alphas_cumprod: Tensor
) -> Tensor:
    """The UNet's regression target for ``x_t = sqrt(acp_t) * latents + sqrt(1 - acp_t) * noise``.

    - ``"epsilon"``: the noise.
    - ``"v_prediction"``: ``v = sqrt(acp_t) * noise - sqrt(1 - acp_t) * latents``, computed in
      (at least) fp32, with the per-sample coefficient broadcast over C, H, W.
    - ``"sample"``: the clean latents.
    """
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return latents
    if prediction_type != "v_prediction":
        raise ValueError(f"unknown prediction_type {prediction_type!r}; supported: {', '.join(PREDICTION_TYPES)}")
    if noise.shape != latents.shape or timesteps.shape != latents.shape[:1]:
        raise ValueError(
            f"expected latents and noise [B, ...] and timesteps [B], got {tuple(latents.shape)}, "
            f"{tuple(noise.shape)} and {tuple(timesteps.shape)}"
        )
    dtype = torch.promote_types(latents.dtype, torch.float32)
    acp = alphas_cumprod.to(device=latents.device, dtype=dtype)[timesteps.to(latents.device).long()]
    acp = acp.reshape(-1, *([1] * (latents.ndim - 1)))
    return acp.sqrt() * noise.to(dtype) - (1 - acp).sqrt() * latents.to(dtype)


class DdpmProcess:
    """DDPM with integer timesteps over a diffusers DDPM-style scheduler (``alphas_cumprod``, ``add_noise``)."""

    kind = "ddpm"

    def __init__(self, scheduler):
        self.scheduler = scheduler

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def prediction_type(self) -> str:
        return str(self.scheduler.config.prediction_type)

    def draw(self, shape: tuple[int, int, int, int], generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Timesteps ``[b]`` (int64 in [0, T)) then noise ``[b, C, h, w]`` fp32, both on the CPU."""
        b = shape[0]
        timesteps = torch.randint(0, self.num_train_timesteps, (b,), generator=generator)
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        return noise, timesteps

    def noisy(self, x0: Tensor, noise: Tensor, t: Tensor, prediction_type: str | None = None) -> tuple[Tensor, Tensor]:
        """``(x_t, target)`` for clean ``x0`` ``[N, C, h, w]``, ``noise`` like it and timesteps ``t`` ``[N]``."""
        x_t = self.scheduler.add_noise(x0, noise, t)
        target = prediction_target(prediction_type or self.prediction_type, x0, noise, t,
                                   self.scheduler.alphas_cumprod)
        return x_t, target

    def model_timestep(self, t: Tensor) -> Tensor:
        return t


@dataclass(frozen=True)
class FlowSampling:
    """How rectified-flow sigmas are drawn (diffusers' SD3 training script's arguments and defaults)."""

    weighting_scheme: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29


class RectifiedFlow:
    """Rectified flow over a ``FlowMatchEulerDiscreteScheduler`` (its ``sigmas`` carry the model's ``shift``)."""

    kind = "flow"
    prediction_type = "flow"

    def __init__(self, scheduler, sampling: FlowSampling | None = None):
        self.scheduler = scheduler
        self.sampling = sampling or FlowSampling()
        # The training scheduler's sigmas, as built from its config (T values, shifted, high noise first).
        self.sigmas = torch.as_tensor(scheduler.sigmas, dtype=torch.float32)[: self.num_train_timesteps]

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def draw(self, shape: tuple[int, int, int, int], generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Sigmas ``[b]`` fp32 in (0, 1] then noise ``[b, C, h, w]`` fp32, both on the CPU."""
        from diffusers.training_utils import compute_density_for_timestep_sampling

        s = self.sampling
        u = compute_density_for_timestep_sampling(s.weighting_scheme, shape[0], logit_mean=s.logit_mean,
                                                  logit_std=s.logit_std, mode_scale=s.mode_scale,
                                                  generator=generator)
        indices = (u * self.num_train_timesteps).long().clamp(0, self.num_train_timesteps - 1)
        sigmas = self.sigmas[indices]
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        return noise, sigmas

    def noisy(self, x0: Tensor, noise: Tensor, sigma: Tensor, prediction_type: str | None = None):
        """``x_t = (1 - sigma) x0 + sigma noise`` and the velocity target ``noise - x0``, in x0's dtype."""
        s = sigma.to(x0.device, x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
        return (1 - s) * x0 + s * noise, noise - x0

    def model_timestep(self, sigma: Tensor) -> Tensor:
        """The transformer's ``timestep``: ``sigma * 1000`` (diffusers' SD3 scheduler and training script)."""
        return sigma * 1000.0


def noise_process(scheduler_or_process, sampling: FlowSampling | None = None):
    """The noise process for a diffusers scheduler (a process passes through): flow-matching schedulers give
    :class:`RectifiedFlow`, every other (DDPM-style) one :class:`DdpmProcess`."""
    if isinstance(scheduler_or_process, (DdpmProcess, RectifiedFlow)):
        return scheduler_or_process
    if "FlowMatch" in type(scheduler_or_process).__name__:
        return RectifiedFlow(scheduler_or_process, sampling)
    return DdpmProcess(scheduler_or_process)

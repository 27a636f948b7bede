"""One training forward: per-sample errors for chosen and rejected, then the objective's loss.

Both images of a pair get the SAME noise and the SAME timestep, so e_w and e_l differ only
by the image (the losses compare them). Chosen and rejected run through the UNet as one
batch of 2B. Diffusion-KTO reads single labelled examples instead (a pair = a desirable
chosen and an undesirable rejected example): each example draws its own noise and timestep,
shared only with its reference forward. Noise and timesteps come from a generator seeded by
(seed, step, rank, micro step), so a resumed run draws exactly what an uninterrupted one would.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.families import ModelFamily, family_of_denoiser
from pipeline.families.noise import DdpmProcess, noise_process
from pipeline.runtime.seeds import derive_seed

from . import objectives
from .losses import LossOutput, per_sample_error
from .objectives import Terms


@dataclass(frozen=True)
class Objective:
    """A run's objective: its declaration (:mod:`train.objectives`, looked up by ``name``) and the values
    its loss reads (beta, the model's T and prediction type, MaPO's a, KTO's lambdas, SPO's ratio clip)."""

    name: str  # a registered objective: "mapo" | "dpo" | "sft" | "kto" | "spo" | ...
    beta: float | None
    num_train_timesteps: int
    prediction_type: str
    mapo_a: float = 0.5
    kto_lambda_desirable: float = 1.0
    kto_lambda_undesirable: float = 1.0
    spo_clip: float = 0.1
    sft_weight: float = 0.0  # an SFT term on the chosen images added to the loss (objectives that take one: dpo)

    @property
    def spec(self) -> objectives.ObjectiveSpec:
        return objectives.get(self.name)

    @property
    def uses_rejected(self) -> bool:
        return self.spec.uses_rejected

    @property
    def uses_reference(self) -> bool:
        """The objective compares the policy with a frozen reference (DPO, KTO, SPO: its declaration says)."""
        return self.spec.needs_reference

    @property
    def per_example_noise(self) -> bool:
        """Objectives reading examples (KTO): one noise and timestep per image, not per pair."""
        return self.spec.reads == "examples"

    def loss(self, terms: Terms) -> LossOutput:
        """The declared loss (:attr:`train.objectives.ObjectiveSpec.loss`) of ``terms`` under this run's values,
        plus ``sft_weight`` times the chosen images' mean error when it is set (:func:`train.objectives.with_sft_term`).
        """
        out = self.spec.loss(terms, self)
        return objectives.with_sft_term(out, terms, self.sft_weight) if self.sft_weight else out


def step_generator(seed: int, step: int, rank: int, micro_step: int) -> torch.Generator:
    """A CPU generator for one micro-batch's noise and timesteps (device-independent draws)."""
    return torch.Generator(device="cpu").manual_seed(derive_seed(seed, f"train-step-{step}-rank-{rank}", micro_step))


def draw_noise(latents: Tensor, num_train_timesteps, generator: torch.Generator,
               per_example: bool = False) -> tuple[Tensor, Tensor]:
    """One noise tensor ``[B, C, h, w]`` and one timestep ``[B]`` per PAIR: ``latents`` is ``[B, K, C, h, w]``.

    ``per_example``: one per image instead, ``[K*B, ...]`` (KTO; K = 2 for pairs, 1 for unpaired examples).
    ``num_train_timesteps``: T of DDPM's integer timesteps, or a noise process
    (:mod:`pipeline.families.noise`; rectified flow draws sigmas ``[B]`` fp32 instead).
    """
    b, k, c, h, w = latents.shape
    if per_example:
        b *= k
    process = num_train_timesteps if hasattr(num_train_timesteps, "draw") else None
    if process is None:  # DDPM's draw, as DdpmProcess.draw
        timesteps = torch.randint(0, num_train_timesteps, (b,), generator=generator)
        noise = torch.randn((b, c, h, w), generator=generator, dtype=torch.float32)
    else:
        noise, timesteps = process.draw((b, c, h, w), generator)
    return noise.to(latents.device), timesteps.to(latents.device)


def unet_inputs(batch: dict, noise: Tensor, timesteps: Tensor, noise_scheduler, objective: Objective,
                family=None):
    """Noisy latents, timesteps, target and conditioning for the denoiser: ``[chosen..., rejected...]``.

    ``batch["latents"]`` is ``[B, 2, C, h, w]`` (pairs) or ``[B, 1, C, h, w]`` (unpaired examples, KTO
    only); ``noise`` ``[B, C, h, w]`` and ``timesteps`` ``[B]`` (one per pair), or ``[kB, ...]`` (one per
    image, :func:`draw_noise` with ``per_example``). Returns ``x_t`` ``[kB, C, h, w]``, ``t`` ``[kB]`` (the
    denoiser's timestep: DDPM's integer t, or flow's sigma * 1000), the target like ``x_t`` (the noise
    process's: epsilon / v / x0, or the velocity noise - x0) and the denoiser's conditioning (``family``'s;
    default: SDXL's when the batch has pooled embeddings, else SD1.5's), with k = 2 (chosen, then rejected),
    or k = 1 for SFT (chosen only) and unpaired examples. All in the batch's dtype: the batch arrives
    already cast (:func:`train.data.to_compute`).
    """
    from pipeline.families import SD15, SDXL

    latents = batch["latents"]
    images = [latents[:, i] for i in range(latents.shape[1])] if objective.uses_rejected else [latents[:, 0]]
    k = len(images)
    x0 = torch.cat(images)
    per_pair = 1 if noise.shape[0] == x0.shape[0] else k  # per-pair noise: the same for both images of a pair
    eps = noise.repeat(per_pair, 1, 1, 1)
    t = timesteps.repeat(per_pair)
    process = noise_process(noise_scheduler)
    prediction = objective.prediction_type if isinstance(process, DdpmProcess) else None
    x_t, target = process.noisy(x0, eps, t, prediction)
    family = family or (SDXL if "pooled_prompt_embeds" in batch else SD15)
    return x_t, process.model_timestep(t), target, family.conditioning(batch, k)


def errors(unet, x_t: Tensor, t: Tensor, target: Tensor, cond: dict, family=None) -> Tensor:
    """Per-sample squared error ``[N]`` (at least fp32) of the denoiser's prediction for ``x_t`` ``[N, C, h, w]``.

    ``family``: how the denoiser is called (default: recognised from its config). The inputs go in as they
    are (no cast here): precision is autocast's business.
    """
    if family is None:
        try:
            family = family_of_denoiser(unet)
        except ValueError:  # not a diffusers denoiser (a test double): the UNet call
            family = ModelFamily
    pred = family.predict(unet, x_t, t, cond)
    return per_sample_error(pred, target)


@contextlib.contextmanager
def adapters_disabled(unet):
    """The LoRA model with its adapter switched off = the base model (DPO's reference)."""
    unet.disable_adapters()
    try:
        yield unet
    finally:
        unet.enable_adapters()


def reference_errors(reference, x_t, t, target, cond, lora_unet=None, family=None) -> Tensor:
    """DPO's (and KTO's) reference errors ``[N]`` under no_grad: a frozen copy, or the LoRA UNet with its adapter off.

    Raises ValueError when there is neither.
    """
    with torch.no_grad():
        if reference is not None:
            return errors(reference, x_t, t, target, cond, family)
        if lora_unet is None:
            raise ValueError("DPO and KTO need a reference: a frozen UNet, or a LoRA UNet whose adapter can be "
                             "disabled")
        with adapters_disabled(lora_unet) as base:
            return errors(base, x_t, t, target, cond, family)


def _check_one_dtype(batch: dict) -> None:
    dtypes = {k: v.dtype for k, v in batch.items() if isinstance(v, Tensor) and v.is_floating_point()}
    if len(set(dtypes.values())) > 1:
        raise ValueError(f"the batch's floating tensors must share one dtype, got {dtypes}; "
                         "cast it with train.data.to_compute first")


def compute_loss(unet, batch: dict, noise_scheduler, objective: Objective, generator: torch.Generator, *,
                 reference=None, lora_base=None, reduce_mean=None) -> LossOutput:
    """Forward chosen (and rejected) through ``unet`` and return the objective's :class:`LossOutput`.

    ``batch``: "latents" ``[B, 2, C, h, w]`` (chosen first), "prompt_embeds" ``[B, L, D]`` and, for
    SDXL, "pooled_prompt_embeds" ``[B, P]`` and "add_time_ids" ``[B, 6]`` (SD3: "pooled_prompt_embeds"),
    all floating tensors in ONE dtype (fp32 from :func:`train.data.to_compute`; fp64 in gradient checks);
    ValueError otherwise. Nothing is cast here: under mixed precision the caller's autocast picks each op's
    precision. The family (how the denoiser is called) comes from ``unet``'s config, the noise process (DDPM
    or rectified flow) from ``noise_scheduler`` (:mod:`pipeline.families`). ``unet`` may be a DDP wrapper;
    ``lora_base`` is the unwrapped LoRA UNet (for the DPO / KTO reference without a second UNet). KTO also
    takes unpaired examples (latents ``[B, 1, C, h, w]``, "label" ``[B]``) and ``reduce_mean``, the
    all-process mean of a scalar (accelerate's ``reduce(..., "mean")``), for its reference point;
    None: this process's batch alone.
    """
    _check_one_dtype(batch)
    try:
        family = family_of_denoiser(unet)
    except ValueError:  # not a diffusers denoiser (a test double): the UNet call
        family = None
    process = (family or ModelFamily).noise_process(noise_scheduler)  # the family's sigma sampling (Flux: uniform)
    noise, timesteps = draw_noise(batch["latents"], process, generator, per_example=objective.per_example_noise)
    x_t, t, target, cond = unet_inputs(batch, noise, timesteps, process, objective, family)
    ref = None
    if objective.uses_reference:
        # Before the policy forward: the reference needs no graph, and its activations are
        # freed before the policy's are allocated.
        ref = reference_errors(reference, x_t, t, target, cond, lora_unet=lora_base, family=family)
    e = errors(unet, x_t, t, target, cond, family)
    return objective.loss(Terms(e, ref, batch, reduce_mean))

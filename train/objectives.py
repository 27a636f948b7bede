"""The training objectives as data: one :class:`ObjectiveSpec` per objective, registered here.

Everything that differs between objectives follows from its declaration: ``mapo-train``'s
``--objective`` choices and help and ``--beta``'s defaults (:mod:`train.config`), the reference model
(:mod:`train.model_setup`), the data check (:mod:`train.data`), the batch source
(:mod:`train.batch_sources`: latent pairs or examples, or prompts sampled online), the loss dispatch
(:func:`train.step.compute_loss`) and the model card (:mod:`train.model_card`).

Adding an objective = its loss (a function returning :class:`train.losses.LossOutput`, e.g. in
:mod:`train.losses`) and one :func:`register` call below. This module imports the losses only; it
imports neither the config nor the trainer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .losses import (
    LossOutput,
    dpo_learning_rate_warning,
    dpo_loss,
    kto_loss,
    kto_saturation_warning,
    mapo_loss,
    sft_loss,
    spo_loss,
)

READS = ("pairs", "examples", "prompts")


@dataclass(frozen=True)
class Terms:
    """What a batch source's forward hands an objective's loss (:attr:`ObjectiveSpec.loss`).

    Latent batches (:func:`train.step.compute_loss`): ``e`` ``[kB]`` (at least fp32) are the policy's
    per-image denoising errors in ``[chosen..., rejected...]`` order (k = 2; k = 1 for an objective
    without ``uses_rejected`` and for unpaired examples), ``ref`` the frozen reference's (None without
    ``needs_reference``), ``batch`` the latent batch (KTO reads its labels) and ``reduce_mean`` the
    all-process mean of a scalar (None: this process alone).
    Online prompts (:class:`train.batch_sources.OnlineSpo`): ``e`` ``[2P]`` holds the policy's
    log-probabilities of the P kept pairs' winners then losers, ``ref`` the reference's.
    """

    e: Tensor
    ref: Tensor | None = None
    batch: dict | None = None
    reduce_mean: Callable[[Tensor], Tensor] | None = None


@dataclass(frozen=True)
class ObjectiveSpec:
    """One training objective, declared once.

    Attributes:
        name: the ``--objective`` value.
        help: the ``--objective`` help's words for it (shown as ``name (help)``).
        title: the model card's name for the method, with its source.
        default_beta: ``--beta``'s default (None: the objective has no beta); its source is said at
            the declaration.
        needs_reference: it compares the policy with a frozen reference (a full fine-tune keeps a copy of
            the base model; LoRA: the adapter switched off).
        reads: "pairs" (preference pairs of latents), "examples" (labelled latents: unpaired examples, or
            pairs read as chosen = desirable, rejected = undesirable; each image its own noise and timestep)
            or "prompts" (samples its own images online from ``--prompts``).
        loss: ``loss(terms, objective) -> LossOutput``: :class:`Terms` from the batch source's forward and
            the run's :class:`train.step.Objective` (beta and the other hyperparameters).
        uses_rejected: the rejected image of a pair is run through the model (SFT: chosen only).
        warning: ``warning(beta, learning_rate) -> str | None``, said once at start-up (KTO's saturation,
            DPO's learning rate).
        takes_sft_term: ``--sft-weight`` may add an SFT term on the chosen images (:func:`with_sft_term`): a
            pair objective without one of its own (DPO; MaPO's loss and SFT already are one).
    """

    name: str
    help: str
    title: str
    default_beta: float | None
    needs_reference: bool
    reads: str
    loss: Callable[[Terms, object], LossOutput]
    uses_rejected: bool = True
    warning: Callable[[float, float], str | None] | None = None
    takes_sft_term: bool = False

    def __post_init__(self):
        if self.reads not in READS:
            raise ValueError(f"reads must be one of {READS}, got {self.reads!r}")


_REGISTRY: dict[str, ObjectiveSpec] = {}


def register(spec: ObjectiveSpec) -> ObjectiveSpec:
    """Add ``spec`` to the objectives ``mapo-train`` offers (in registration order).

    Raises:
        ValueError: an objective of that name is already registered.
    """
    if spec.name in _REGISTRY:
        raise ValueError(f"objective {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> ObjectiveSpec:
    """The registered objective ``name``.

    Raises:
        KeyError: no objective of that name (the config's choices refuse it earlier, as a UserError).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown objective {name!r}; registered: {', '.join(_REGISTRY)}") from None


def names() -> tuple[str, ...]:
    """The registered objectives' names, in registration order."""
    return tuple(_REGISTRY)


def specs() -> tuple[ObjectiveSpec, ...]:
    return tuple(_REGISTRY.values())


def objective_help() -> str:
    """``--objective``'s help: every objective as ``name (help)``, the last after "or"."""
    parts = [f"{s.name} ({s.help})" for s in specs()]
    return (", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else "".join(parts)) + "."


def beta_help() -> str:
    """``--beta``'s help: the default of every objective that has one."""
    defaults = ", ".join(f"{s.default_beta:g} for {s.name}" for s in specs() if s.default_beta is not None)
    return f"Preference strength: default {defaults}."


def with_sft_term(out: LossOutput, terms: Terms, weight: float) -> LossOutput:
    """``out`` with an SFT term on the chosen images added: ``loss + weight * mean(e_w)``, where ``e_w`` ``[B]`` is
    the first half of ``terms.e`` (the chosen images' denoising errors). Logged: ``loss`` is the sum, what is
    optimised; ``preference_term`` the objective's own loss (``out``'s logged ``loss``); ``sft_term`` mean(e_w),
    unweighted.

    The pair-objective counterpart of TRL's ``DPOTrainer(rpo_alpha=...)`` (Pang et al. 2024, arXiv 2404.19733:
    DPO plus the chosen responses' NLL), with the denoising error standing in for the NLL as in SFT
    (:func:`train.losses.sft_loss`). :meth:`train.step.Objective.loss` calls it for a non-zero weight only.

    Raises:
        ValueError: ``terms.e`` does not hold chosen then rejected errors (an odd number of entries), or ``out``
            already logs an ``sft_term`` (MaPO's loss has one of its own).
    """
    if terms.e.shape[0] % 2:
        raise ValueError(f"an SFT term needs [chosen..., rejected...] errors, got {terms.e.shape[0]} entries")
    if "sft_term" in out.metrics:
        raise ValueError("the objective's loss has an SFT term of its own (metric sft_term)")
    e_w = terms.e.chunk(2)[0].mean()
    loss = out.loss + weight * e_w
    metrics = {**out.metrics, "loss": loss.detach().float(), "sft_term": e_w.detach().float()}
    if "loss" in out.metrics:
        metrics["preference_term"] = out.metrics["loss"]
    return LossOutput(loss=loss, metrics=metrics, has_signal=out.has_signal)


def desirable_labels(batch: dict) -> Tensor:
    """KTO's labels ``[kB]`` in :func:`train.step.unet_inputs` order: pairs give 1 (chosen) x B then 0 (rejected)
    x B; unpaired examples (``latents`` ``[B, 1, ...]``) carry their own ``batch["label"]`` ``[B]``.

    Raises ValueError for unpaired latents without labels."""
    latents = batch["latents"]
    b, k = latents.shape[:2]
    if k == 2:
        return torch.cat([torch.ones(b, dtype=torch.long), torch.zeros(b, dtype=torch.long)]).to(latents.device)
    if "label" not in batch:
        raise ValueError("unpaired latents [B, 1, C, h, w] need batch['label'] [B]")
    return batch["label"].to(latents.device)


# --------------------------------------------------------------------------- the losses, as the specs call them


def _mapo(t: Terms, o) -> LossOutput:
    e_w, e_l = t.e.chunk(2)
    return mapo_loss(e_w, e_l, beta=o.beta, a=o.mapo_a, num_train_timesteps=o.num_train_timesteps)


def _dpo(t: Terms, o) -> LossOutput:
    e_w, e_l = t.e.chunk(2)
    ref_w, ref_l = t.ref.chunk(2)
    return dpo_loss(e_w, e_l, ref_w, ref_l, beta=o.beta)


def _sft(t: Terms, o) -> LossOutput:
    return sft_loss(t.e)


def _kto(t: Terms, o) -> LossOutput:
    # The reference point z: the mean implicit reward of the whole global batch, no gradient.
    kl = (t.ref - t.e).detach().mean()
    if t.reduce_mean is not None:
        kl = t.reduce_mean(kl)
    return kto_loss(t.e, t.ref, desirable_labels(t.batch), beta=o.beta, kl=kl,
                    lambda_desirable=o.kto_lambda_desirable, lambda_undesirable=o.kto_lambda_undesirable)


def _spo(t: Terms, o) -> LossOutput:
    logp_w, logp_l = t.e.chunk(2)
    ref_w, ref_l = t.ref.chunk(2)
    return spo_loss(logp_w, logp_l, ref_w, ref_l, beta=o.beta, clip=o.spo_clip)


# --------------------------------------------------------------------------- the built-in objectives
# Default betas: method.md (MaPO 0.1, Diffusion-DPO 5000); Diffusion-KTO 1000 (jacklishufan/diffusion-kto's
# --beta_dpo default); SPO 10 (RockeyCoss/SPO configs/basic_config.py: train.beta).

register(ObjectiveSpec(
    "mapo", "reference-free", "MaPO (margin-aware preference optimization, arXiv 2406.06424)",
    default_beta=0.1, needs_reference=False, reads="pairs", loss=_mapo))
register(ObjectiveSpec(
    "dpo", "Diffusion-DPO", "Diffusion-DPO", default_beta=5000.0, needs_reference=True, reads="pairs", loss=_dpo,
    takes_sft_term=True, warning=dpo_learning_rate_warning))
register(ObjectiveSpec(
    "sft", "chosen images only", "SFT on the chosen images", default_beta=None, needs_reference=False,
    reads="pairs", loss=_sft, uses_rejected=False))
register(ObjectiveSpec(
    "kto", "Diffusion-KTO: desirable/undesirable examples; reads pairs as chosen = desirable, rejected = undesirable",
    "Diffusion-KTO (arXiv 2404.04465; sigmoid utility, desirable / undesirable examples)",
    default_beta=1000.0, needs_reference=True, reads="examples", loss=_kto, warning=kto_saturation_warning))
register(ObjectiveSpec(
    "spo", "online step-aware preference optimisation: samples from --prompts, needs --model",
    "SPO (step-aware preference optimisation, arXiv 2406.04314), online",
    default_beta=10.0, needs_reference=True, reads="prompts", loss=_spo))

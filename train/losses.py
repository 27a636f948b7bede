"""Preference losses for diffusion fine-tuning: MaPO, Diffusion-DPO, Diffusion-KTO, SFT-Chosen and SPO
(per sampling step).

Every loss is a small pure function with explicit hyperparameters. It returns a
:class:`LossOutput` holding the differentiable loss and the terms worth logging,
so the trainer never re-derives loss internals for its logs.

Inputs are per-sample denoising errors of shape ``[B]`` (see :func:`per_sample_error`).
For a preference pair the chosen (``w``) and rejected (``l``) images share the same
noise and the same timestep, so their errors are directly comparable. Diffusion-KTO reads
single labelled examples instead: each compares the policy's error with the reference's
on the same noise and timestep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# The DDPM targets live with the noise processes (pipeline.families.noise); re-exported for the losses' callers.
from pipeline.families.noise import PREDICTION_TYPES, prediction_target  # noqa: F401

# Below this |a*e| margin_weight uses its Taylor series. Above it, the closed form's
# gradient loses about 2*eps/|x| relative precision to cancellation (~2e-5 in fp32
# at 1e-2); the series, truncated after x^4, is off by x^6/30240 (~3e-17 here).
_TAYLOR_THRESHOLD = 1e-2


@dataclass(frozen=True)
class LossOutput:
    """One micro-batch's loss and the terms worth logging.

    ``loss``: scalar, differentiable. ``metrics``: detached fp32 scalars for logging; NaN means "not measured
    in this micro-batch" (a per-class mean of a class the batch lacks, SPO's terms without a kept pair), and the
    trainer leaves such a value out of the step's mean (train.trainer.Trainer._optimizer_step) instead of
    averaging a stand-in 0 in.
    ``has_signal``: whether the micro-batch carries anything to learn from. False only when the objective
    found nothing to train on (SPO with no kept pair: ``loss`` is then a zero stand-in); when no micro-batch
    on any rank has signal, the trainer takes no optimizer step (train.trainer.Trainer._optimizer_step).
    """

    loss: Tensor
    metrics: dict[str, Tensor]
    has_signal: bool = True


def _metrics(**terms: Tensor) -> dict[str, Tensor]:
    return {name: value.detach().float() for name, value in terms.items()}


def class_mean(values: Tensor, mask: Tensor) -> Tensor:
    """The mean of ``values`` ``[N]`` where ``mask`` ``[N]`` (bool) is True; NaN ("not measured", see
    :class:`LossOutput`) when it is True nowhere, so a batch without the class does not read as a mean of 0."""
    n = mask.sum()
    mean = torch.where(mask, values, 0).sum() / n.clamp(min=1)
    return torch.where(n > 0, mean, torch.full_like(mean, float("nan")))  # no host sync


def _check_errors(**errors: Tensor) -> None:
    shapes = {name: tuple(e.shape) for name, e in errors.items()}
    first = next(iter(shapes.values()))
    if len(first) != 1 or first[0] == 0 or any(s != first for s in shapes.values()):
        raise ValueError(f"per-sample errors must all have the same shape [B] with B >= 1, got {shapes}")


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")


def per_sample_error(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error per sample: ``[B, ...] -> [B]``, averaged over all non-batch dims.

    Both tensors are cast to (at least) fp32 first: under fp16/bf16 autocast the squared
    error of ~1e5 latent elements would be summed in half precision, losing digits the
    loss needs (MaPO and DPO compare e_w against e_l, which are close to each other).
    """
    if pred.shape != target.shape or pred.ndim < 1:
        raise ValueError(
            f"pred and target must have the same shape [B, ...], got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
    diff = pred.to(dtype) - target.to(dtype)
    return diff.square().reshape(diff.shape[0], -1).mean(dim=1)


def margin_weight(e: Tensor, a: float = 0.5) -> Tensor:
    """MaPO's weight ``s(e) = a*e / (exp(a*e) - 1)``: 1 at e = 0, decreasing towards 0.

    With ``x = a*e`` the closed form is a 0/0 at x = 0 and overflows (inf/inf, NaN
    gradients) for large x in fp32 (exp overflows past x ~ 88). So three branches:

    - ``|x| < 1e-2``: Taylor series ``1 - x/2 + x^2/12 - x^4/720`` (exact 1 at 0, and an
      accurate gradient; the closed form's gradient cancels catastrophically near 0);
    - ``x >= 1e-2``: ``x * exp(-x) / -expm1(-x)``, which underflows cleanly to 0;
    - ``x <= -1e-2``: ``x / expm1(x)`` (errors are never negative, kept for completeness).

    Each branch gets a harmless stand-in input where it is not selected (the "safe where"
    pattern), so an unused branch can never put NaN or inf into the gradient.
    """
    _check_positive(a=a)
    x = a * e
    small = x.abs() < _TAYLOR_THRESHOLD
    pos = x >= _TAYLOR_THRESHOLD
    xt = torch.where(small, x, torch.zeros_like(x))
    xp = torch.where(pos, x, torch.ones_like(x))
    xn = torch.where(small | pos, -torch.ones_like(x), x)
    x2 = xt * xt
    s_small = 1 - xt / 2 + x2 / 12 - x2 * x2 / 720
    s_pos = xp * torch.exp(-xp) / -torch.expm1(-xp)
    s_neg = xn / torch.expm1(xn)
    return torch.where(small, s_small, torch.where(pos, s_pos, s_neg))


def mapo_loss(
    e_w: Tensor, e_l: Tensor, *, beta: float = 0.1, a: float = 0.5, num_train_timesteps: int = 1000
) -> LossOutput:
    """MaPO (reference-free): ``mean(e_w) - beta * mean(logsigmoid(T * (s(e_w) - s(e_l))))``.

    The first term is plain denoising on the chosen image (SFT); the second pushes the
    chosen image's weight s(e_w) above the rejected one's, i.e. e_w below e_l. T is the
    scheduler's ``num_train_timesteps``. ``logsigmoid`` stays finite for large |T*margin|.
    """
    _check_errors(e_w=e_w, e_l=e_l)
    _check_positive(beta=beta, a=a)
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    s_w = margin_weight(e_w, a)
    s_l = margin_weight(e_l, a)
    margin = s_w - s_l
    sft_term = e_w.mean()
    margin_term = -beta * F.logsigmoid(num_train_timesteps * margin).mean()
    # The loss is literally the sum of the logged terms, so logs add up exactly.
    loss = sft_term + margin_term
    metrics = _metrics(
        loss=loss,
        sft_term=sft_term,
        margin_term=margin_term,
        e_w=e_w.mean(),
        e_l=e_l.mean(),
        s_w=s_w.mean(),
        s_l=s_l.mean(),
        margin=margin.mean(),
        implicit_acc=(e_w < e_l).float().mean(),
    )
    return LossOutput(loss=loss, metrics=metrics)


def dpo_loss(e_w: Tensor, e_l: Tensor, ref_e_w: Tensor, ref_e_l: Tensor, *, beta: float = 5000.0) -> LossOutput:
    """Diffusion-DPO: ``-mean(logsigmoid(-(beta/2) * d))``, ``d = (e_w - e_l) - (ref_e_w - ref_e_l)``.

    The reference errors come from a frozen model and are detached here, so no gradient
    can reach the reference even if the caller forgot ``no_grad``.
    """
    _check_errors(e_w=e_w, e_l=e_l, ref_e_w=ref_e_w, ref_e_l=ref_e_l)
    _check_positive(beta=beta)
    ref_e_w, ref_e_l = ref_e_w.detach(), ref_e_l.detach()
    d = (e_w - e_l) - (ref_e_w - ref_e_l)
    logits = -(beta / 2) * d
    loss = -F.logsigmoid(logits).mean()
    metrics = _metrics(
        loss=loss,
        e_w=e_w.mean(),
        e_l=e_l.mean(),
        ref_e_w=ref_e_w.mean(),
        ref_e_l=ref_e_l.mean(),
        implicit_acc=(d < 0).float().mean(),
        reward_margin=logits.mean(),
    )
    return LossOutput(loss=loss, metrics=metrics)


def sft_loss(e_w: Tensor) -> LossOutput:
    """SFT-Chosen baseline: plain denoising loss ``mean(e_w)`` on the chosen image only."""
    _check_errors(e_w=e_w)
    loss = e_w.mean()
    return LossOutput(loss=loss, metrics=_metrics(loss=loss, e_w=loss))


def kto_loss(e: Tensor, ref_e: Tensor, desirable: Tensor, *, beta: float = 1000.0, lambda_desirable: float = 1.0,
             lambda_undesirable: float = 1.0, kl: Tensor | None = None) -> LossOutput:
    """Diffusion-KTO with the "sigmoid" utility (Li et al., arXiv 2404.04465, NeurIPS 2024).

    Follows the public code (jacklishufan/diffusion-kto, ``train_kto_sd_v1.5.py``, ``--loss kto
    --halo sigmoid``). Per example ``i`` (policy and reference on the same noise and timestep):

    - implicit reward ``g_i = ref_e_i - e_i`` (how much better the policy denoises it);
    - reference point ``z = clamp(kl, min=0)``, no gradient, where ``kl`` is the mean of ``g`` over
      the batch of ALL processes. The trainer takes that cross-process mean (accelerate's reduce) and
      passes it in; ``kl=None`` uses this batch's own mean ``mean(g)`` (one process);
    - desirable: ``lambda_d * (1 - sigmoid(beta * (g - z)))``; undesirable:
      ``lambda_u * (1 - sigmoid(-beta * (g - z)))``; loss = mean over the examples.

    Defaults are the public code's: ``beta`` 1000 (its ``--beta_dpo``), ``lambda_d = lambda_u = 1``
    (its run: SD1.5 LoRA r8, lr 1e-7, batch 2 x 4 GPUs x 256 accumulation).

    Args:
        e, ref_e: ``[N]`` per-sample errors of policy and reference (ref_e is detached here).
        desirable: ``[N]`` labels, 1 (desirable) or 0 (undesirable); bool or any number dtype.
        kl: optional scalar, the cross-process mean of ``g`` (detached here).

    Returns metrics ``loss``, ``e``, ``ref_e``, ``kl`` (z, after the clamp), ``reward_desirable`` /
    ``reward_undesirable`` and ``e_desirable`` / ``e_undesirable`` (mean g and mean e of each class,
    NaN = not measured when the batch has none, :func:`class_mean`; on pair data they are the chosen /
    rejected images'), ``implicit_acc`` (fraction with ``sign * (g - z) > 0``, sign +1 desirable, -1
    undesirable) and ``desirable_fraction``.

    Raises:
        ValueError: shapes not all ``[N]``, labels other than 0/1, ``kl`` not a scalar, or a
            non-positive ``beta`` / lambda.
    """
    _check_errors(e=e, ref_e=ref_e, desirable=desirable)
    _check_positive(beta=beta, lambda_desirable=lambda_desirable, lambda_undesirable=lambda_undesirable)
    if not bool(((desirable == 0) | (desirable == 1)).all()):
        raise ValueError(f"desirable labels must be 0 or 1, got {desirable.tolist()}")
    ref_e = ref_e.detach()
    g = ref_e - e
    if kl is None:
        kl = g.mean()
    elif kl.numel() != 1:
        raise ValueError(f"kl must be a scalar, got shape {tuple(kl.shape)}")
    z = kl.detach().reshape(()).to(g.dtype).clamp(min=0)
    d = desirable.to(torch.bool)
    logits = beta * (g - z)
    losses = torch.where(d, lambda_desirable * (1 - torch.sigmoid(logits)),
                         lambda_undesirable * (1 - torch.sigmoid(-logits)))
    loss = losses.mean()
    metrics = _metrics(
        loss=loss,
        e=e.mean(),
        ref_e=ref_e.mean(),
        kl=z,
        reward_desirable=class_mean(g, d),
        reward_undesirable=class_mean(g, ~d),
        e_desirable=class_mean(e, d),
        e_undesirable=class_mean(e, ~d),
        implicit_acc=(torch.where(d, logits, -logits) > 0).float().mean(),
        desirable_fraction=d.float().mean(),
    )
    return LossOutput(loss=loss, metrics=metrics)


# Diffusion-KTO's public recipe (jacklishufan/diffusion-kto: beta 1000 at lr 1e-7) has beta x lr = 1e-4. Our
# `make fidelity` run at lr 2e-4 saturated with beta 1000 (product 0.2: prompt following 0.92 -> 0.48) and kept
# prompt following (0.94) with beta 50 (product 1e-2): warn above 1e-2, 100x the public recipe's product.
KTO_BETA_LR_WARN = 1e-2


def kto_saturation_warning(beta: float, learning_rate: float, threshold: float = KTO_BETA_LR_WARN) -> str | None:
    """A one-line start-up warning when ``beta * learning_rate`` exceeds ``threshold``, else None.

    beta multiplies the implicit reward g (:func:`kto_loss`), and each optimizer step moves g by roughly
    the learning rate, so the sigmoid utility saturates (gradient ~0 for most examples, while the first
    large steps have already pulled the model away from the prompt) within a few steps once beta x lr is
    far above the public recipe's 1e-4. ``threshold``: :data:`KTO_BETA_LR_WARN` (where it comes from is
    said there). A warning, not an error: the product is a rule of thumb from one recipe and one run.
    """
    product = beta * learning_rate
    if not product > threshold * (1 + 1e-9):  # 50 x 2e-4 is at the threshold, whatever the float rounding
        return None
    return (f"warning: --objective kto with --beta {beta:g} and --learning-rate {learning_rate:g} (beta x lr = "
            f"{product:g}, above {threshold:g}): the sigmoid utility saturates within a few steps and prompt "
            f"following suffers; lower --beta (to {threshold / learning_rate:g} or less) or --learning-rate "
            f"(to {threshold / beta:g} or less). The public recipe has beta 1000 at lr 1e-7 (beta x lr = 1e-4).")


# Diffusion-DPO's public recipe (SalesforceAIResearch/DiffusionDPO) trains at lr 1e-8 scaled by its batch of 2048:
# 2.048e-5. In `make fidelity-full`'s validation sweep (docs/fidelity-full.md) all 8 DPO runs at lr 2e-4 (beta 5000
# and 500, four datasets) lost prompt following (0.04-0.55) and 7 of them more than doubled the chosen error; all 16
# runs at 2e-5 and 2e-6 kept it at 0.95-1.00: warn above 1e-4, 5x the public recipe's learning rate.
DPO_LR_WARN = 1e-4


def dpo_learning_rate_warning(beta: float, learning_rate: float, threshold: float = DPO_LR_WARN) -> str | None:
    """A one-line start-up warning when Diffusion-DPO's ``learning_rate`` exceeds ``threshold``, else None.

    At a large learning rate DPO's updates wreck what the model drew (issue 29): of that sweep's 8 runs at lr 2e-4,
    7 more than doubled the chosen error and 2 saturated the loss (a zero gradient for over half the steps) while
    prompt following collapsed. ``beta`` is named in the message only: at lr 2e-4 both 5000 and 500 broke.
    ``threshold``: :data:`DPO_LR_WARN` (where it comes from is said there). A warning, not an error: one world's
    evidence (full fine-tunes; LoRA, whose learning rates are usually higher, was not swept) and one public recipe.
    """
    if not learning_rate > threshold * (1 + 1e-9):
        return None
    return (f"warning: --objective dpo with --learning-rate {learning_rate:g} (beta {beta:g}), above {threshold:g}: "
            f"Diffusion-DPO lost prompt following in every run at lr 2e-4 of make fidelity-full's sweep "
            f"(docs/objectives.md); lower --learning-rate to {threshold:g} or less. The public recipe trains at "
            f"about 2e-5 (lr 1e-8 x batch 2048).")


def spo_loss(
    logp_w: Tensor, logp_l: Tensor, ref_logp_w: Tensor, ref_logp_l: Tensor, *, beta: float = 10.0, clip: float = 0.1
) -> LossOutput:
    """SPO (arXiv 2406.04314, public code RockeyCoss/SPO ``train_spo.py``): a DPO loss on one sampling step.

    ``logp_*`` are the policy's log-probabilities ``log p(x_{t-1} | x_t, c)`` ``[B]`` of the preferred (w)
    and rejected (l) candidates drawn from the same ``x_t`` (:func:`train.ddim_logprob.ddim_step_with_log_prob`: the
    Gaussian log-density averaged over C, H, W as the public code does); ``ref_logp_*`` the frozen
    reference's (detached here). With ``r = logp - ref_logp`` clipped to ``[log(1 - clip), log(1 + clip)]``
    (the public code clamps the ratio ``exp(r)`` to ``[1 - eps, 1 + eps]``, eps 0.1: outside it the pair
    gives no gradient), the loss is ``-mean(logsigmoid(beta * (r_w - r_l)))``, beta 10 upstream.

    Raises:
        ValueError: shapes other than four equal ``[B]`` with B >= 1, ``beta <= 0``, ``clip`` outside (0, 1).
    """
    _check_errors(logp_w=logp_w, logp_l=logp_l, ref_logp_w=ref_logp_w, ref_logp_l=ref_logp_l)
    _check_positive(beta=beta)
    if not 0 < clip < 1:
        raise ValueError(f"clip must be in (0, 1), got {clip}")
    low, high = math.log1p(-clip), math.log1p(clip)
    r_w = (logp_w - ref_logp_w.detach()).clamp(low, high)
    r_l = (logp_l - ref_logp_l.detach()).clamp(low, high)
    logits = beta * (r_w - r_l)
    loss = -F.logsigmoid(logits).mean()
    metrics = _metrics(
        loss=loss,
        logp_w=logp_w.mean(),
        logp_l=logp_l.mean(),
        ratio_w=r_w.exp().mean(),
        ratio_l=r_l.exp().mean(),
        implicit_acc=(logits > 0).float().mean(),
        reward_margin=logits.mean(),
    )
    return LossOutput(loss=loss, metrics=metrics)

"""The flow-matching (rectified-flow) training forward: inputs, targets and the objectives on velocity errors,
worked out by hand; SD3's transformer through the trainer's step with every objective."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.families import SD3
from pipeline.families.noise import RectifiedFlow
from train.config import TrainConfig
from train.losses import dpo_loss, mapo_loss, margin_weight
from train.model_setup import setup_models
from train.step import Objective, compute_loss, draw_noise, errors, step_generator, unet_inputs


def _sd3_batch(pairs: int = 2, resolution: int = 64, seed: int = 0) -> dict:
    """What the latent reader gives for SD3: latents (x - shift) * scale, prompt embeds and pooled, no time ids."""
    from pipeline.models.conditioning import encode_text
    from pipeline.models.loading import load_pipeline

    pipe = load_pipeline("tiny-sd3", device="cpu", dtype="fp32", skip=("transformer",))
    g = torch.Generator().manual_seed(seed)
    images = torch.rand((pairs * 2, 3, resolution, resolution), generator=g) * 2 - 1
    cfg = pipe.vae.config
    with torch.no_grad():
        latents = (pipe.vae.encode(images).latent_dist.sample(generator=g) - cfg.shift_factor) * cfg.scaling_factor
    emb = encode_text(pipe, [f"a test prompt {i}" for i in range(pairs)], max_sequence_length=16)
    return {"latents": latents.reshape(pairs, 2, *latents.shape[1:]), "prompt_embeds": emb.prompt_embeds.clone(),
            "pooled_prompt_embeds": emb.pooled.clone()}


def _setup(objective="mapo", lora_rank=0):
    cfg = TrainConfig(data="x", model="tiny-sd3", objective=objective, lora_rank=lora_rank)
    models = setup_models(cfg, torch.float32, torch.device("cpu"))
    obj = Objective(objective, cfg.resolved_beta, models.num_train_timesteps, models.prediction_type)
    return models, obj


def test_chosen_and_rejected_share_noise_and_sigma_and_the_target_is_the_velocity():
    models, obj = _setup()
    assert models.family == "sd3" and models.prediction_type == "flow"
    batch = _sd3_batch()
    process = RectifiedFlow(models.noise_scheduler)
    noise, sigma = draw_noise(batch["latents"], process, step_generator(0, 0, 0, 0))
    assert noise.shape == (2, 16, 8, 8) and sigma.dtype == torch.float32 and ((sigma > 0) & (sigma <= 1)).all()
    x_t, t, target, cond = unet_inputs(batch, noise, sigma, models.noise_scheduler, obj, SD3)
    x0 = torch.cat([batch["latents"][:, 0], batch["latents"][:, 1]])
    s = torch.cat([sigma, sigma]).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, (1 - s) * x0 + s * torch.cat([noise, noise]))
    torch.testing.assert_close(target, torch.cat([noise, noise]) - x0)
    torch.testing.assert_close(t, torch.cat([sigma, sigma]) * 1000)
    assert set(cond) == {"encoder_hidden_states", "pooled_projections"} and cond["pooled_projections"].shape == (4, 64)


def test_velocity_error_by_hand():
    """e = mean over latent elements of (v_pred - (noise - x0))^2, the transformer called with keywords."""

    class Constant(torch.nn.Module):
        def forward(self, hidden_states, timestep, encoder_hidden_states, pooled_projections, return_dict):
            return (torch.full_like(hidden_states, 0.5),)

    x0 = torch.tensor([[[[1.0, -1.0]]], [[[0.0, 2.0]]]])
    noise = torch.tensor([[[[0.0, 1.0]]], [[[1.0, 1.0]]]])
    target = noise - x0  # [[-1, 2]], [[1, -1]]
    e = errors(Constant(), x0, torch.tensor([500.0, 500.0]), target,
               {"encoder_hidden_states": None, "pooled_projections": None}, SD3)
    # ((0.5 + 1)^2 + (0.5 - 2)^2) / 2 = 2.25; ((0.5 - 1)^2 + (0.5 + 1)^2) / 2 = 1.25
    torch.testing.assert_close(e, torch.tensor([2.25, 1.25]))


def test_mapo_on_velocity_errors_by_hand():
    """The flow MaPO is the DDPM one on velocity errors (docs/flow-matching.md): a = 0.5, T = 1000, beta = 0.1.
    e_w = 1.6, e_l = 1.7: s(e) = a e / (exp(a e) - 1)."""
    e_w, e_l = torch.tensor([1.6]), torch.tensor([1.7])
    s = [0.8 / math.expm1(0.8), 0.85 / math.expm1(0.85)]
    torch.testing.assert_close(margin_weight(e_w), torch.tensor([s[0]]))
    out = mapo_loss(e_w, e_l, beta=0.1, a=0.5, num_train_timesteps=1000)
    logit = 1000 * (s[0] - s[1])  # ~ +18.3: the chosen image's lower error is rewarded
    expected = 1.6 - 0.1 * math.log(1 / (1 + math.exp(-logit)))
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert logit == pytest.approx(18.28, abs=0.01)


def test_flow_dpo_by_hand():
    """Diffusion-DPO's flow form (flow_grpo, Flow-Factory): -log sigmoid(-beta/2 [(e_w - ref_w) - (e_l - ref_l)])."""
    out = dpo_loss(torch.tensor([1.6]), torch.tensor([1.7]), torch.tensor([1.65]), torch.tensor([1.66]), beta=100.0)
    d = (1.6 - 1.65) - (1.7 - 1.66)  # -0.09
    assert out.loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(50 * d))), rel=1e-5)


@pytest.mark.parametrize("objective", ["mapo", "dpo", "sft", "kto"])
def test_each_objective_runs_on_sd3(objective):
    models, obj = _setup(objective)
    out = compute_loss(models.unet, _sd3_batch(), models.noise_scheduler, obj, step_generator(0, 0, 0, 0),
                       reference=models.reference)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in models.unet.parameters())
    if objective == "dpo":  # reference = policy at step 0
        assert out.loss.item() == pytest.approx(math.log(2), abs=1e-4)


def test_lora_dpo_reference_is_the_adapter_switched_off():
    models, obj = _setup("dpo", lora_rank=2)
    out = compute_loss(models.unet, _sd3_batch(), models.noise_scheduler, obj, step_generator(0, 0, 0, 0),
                       lora_base=models.unet)
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-4)  # LoRA B starts at zero: policy = base


@pytest.mark.parametrize("swap", [False, pytest.param(True, marks=pytest.mark.xfail(strict=True, reason=(
    "sabotage: chosen and rejected swapped, MaPO must then widen the wrong margin")))])
def test_mapo_steps_widen_the_velocity_margin(swap):
    """A few MaPO steps on one batch with fixed noise and sigma lower e_w - e_l (the chosen image's velocity error
    falls below the rejected one's); with the pair swapped the same steps widen the opposite margin."""
    torch.manual_seed(0)
    models, obj = _setup("mapo")
    batch = _sd3_batch(pairs=2)
    if swap:
        batch = dict(batch, latents=batch["latents"].flip(1))
    opt = torch.optim.AdamW([p for p in models.unet.parameters() if p.requires_grad], lr=1e-3)

    def margin():
        with torch.no_grad():
            m = compute_loss(models.unet, _sd3_batch(pairs=2), models.noise_scheduler, obj,
                             step_generator(0, 0, 0, 0)).metrics
        return (m["e_w"] - m["e_l"]).item()

    before = margin()
    for _ in range(8):
        opt.zero_grad()
        compute_loss(models.unet, batch, models.noise_scheduler, obj, step_generator(0, 0, 0, 0)).loss.backward()
        opt.step()
    assert margin() < before - 1e-3

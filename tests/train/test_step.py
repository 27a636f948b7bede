"""The training forward on real tiny models: pairing, objectives, reference handling, gradients."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from tests.train.batches import real_batch
from train.config import TrainConfig
from train.model_setup import setup_models
from train.objectives import desirable_labels
from train.step import Objective, compute_loss, draw_noise, step_generator, unet_inputs


def _setup(model="tiny-sdxl", objective="mapo", lora_rank=0, **kw):
    cfg = TrainConfig(data="x", model=model, objective=objective, lora_rank=lora_rank, **kw)
    models = setup_models(cfg, torch.float32, torch.device("cpu"))
    obj = Objective(objective, cfg.resolved_beta, models.num_train_timesteps, models.prediction_type)
    return cfg, models, obj


def _loss(models, obj, batch, step=0, lora=False):
    gen = step_generator(0, step, 0, 0)
    return compute_loss(models.unet, batch, models.noise_scheduler, obj, gen, reference=models.reference,
                        lora_base=models.unet if lora else None)


@pytest.mark.parametrize("model", ["tiny-sdxl", "tiny-sd15"])
@pytest.mark.parametrize("objective", ["mapo", "dpo", "sft", "kto"])
def test_each_objective_runs_and_backprops(model, objective):
    _, models, obj = _setup(model, objective)
    out = _loss(models, obj, real_batch(model))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in models.unet.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert models.family == ("sdxl" if model == "tiny-sdxl" else "sd15")
    if objective == "dpo":  # the reference starts equal to the policy: d ~ 0 (fp32 kernel noise x beta/4)
        assert out.loss.item() == pytest.approx(math.log(2), abs=1e-3)
        assert all(p.grad is None for p in models.reference.parameters())
    if objective == "kto":  # policy = reference: every g ~ 0, z = 0, each example's loss 1 - sigmoid(~0)
        assert out.loss.item() == pytest.approx(0.5, abs=1e-3) and out.metrics["desirable_fraction"] == 0.5
        assert all(p.grad is None for p in models.reference.parameters())


def test_kto_examples_get_their_own_noise_timestep_and_label():
    _, models, obj = _setup("tiny-sd15", "kto", lora_rank=2)
    batch = real_batch("tiny-sd15", pairs=3)
    noise, t = draw_noise(batch["latents"], 1000, step_generator(0, 0, 0, 0), per_example=True)
    assert noise.shape[0] == 6 and t.shape == (6,)
    x_t, tt, target, cond = unet_inputs(batch, noise, t, models.noise_scheduler, obj)
    # One noise and timestep per image (chosen and rejected no longer share them), labels 1 then 0.
    assert torch.equal(tt, t) and torch.equal(target, noise) and not torch.equal(target[:3], target[3:])
    assert x_t.shape[0] == 6 and cond["encoder_hidden_states"].shape[0] == 6
    assert desirable_labels(batch).tolist() == [1, 1, 1, 0, 0, 0]
    # Unpaired examples: one image each, labels from the batch.
    unpaired = dict(batch, latents=batch["latents"][:, :1], label=torch.tensor([0, 1, 0]))
    assert desirable_labels(unpaired).tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="label"):
        desirable_labels(dict(batch, latents=batch["latents"][:, :1]))
    seen = []
    out = compute_loss(models.unet, unpaired, models.noise_scheduler, obj, step_generator(0, 0, 0, 0),
                       lora_base=models.unet, reduce_mean=lambda v: seen.append(v.item()) or v + 1.0)
    # LoRA B starts at 0, so policy = reference (adapter off) exactly: the batch mean of g is 0 and z
    # is what the (stand-in) cross-process reduce returned, 1. Then beta (g - z) = -1000: desirable
    # loss 1 - sigmoid(-1000) = 1, undesirable 1 - sigmoid(1000) = 0; mean over [0, 1, 0] = 1/3.
    assert seen == [0.0] and out.metrics["kl"].item() == 1.0
    assert out.loss.item() == pytest.approx(1 / 3, abs=1e-6)
    assert out.metrics["desirable_fraction"].item() == pytest.approx(1 / 3)


def test_pair_shares_noise_and_timestep():
    _, models, obj = _setup()
    batch = real_batch(pairs=3)
    noise, t = draw_noise(batch["latents"], 1000, step_generator(0, 0, 0, 0))
    x_t, tt, target, cond = unet_inputs(batch, noise, t, models.noise_scheduler, obj)
    assert x_t.shape[0] == 6 and torch.equal(tt[:3], tt[3:]) and torch.equal(target[:3], target[3:])
    assert torch.equal(cond["encoder_hidden_states"][:3], cond["encoder_hidden_states"][3:])
    # Identical images in a pair give identical errors: only the image may differ.
    same = dict(batch, latents=batch["latents"][:, :1].repeat(1, 2, 1, 1, 1))
    out = _loss(models, obj, same)
    assert out.metrics["e_w"] == out.metrics["e_l"] and out.metrics["implicit_acc"] == 0
    assert out.metrics["margin"] == 0


def test_noise_is_reproducible_per_step_and_rank():
    lat = torch.zeros(2, 2, 4, 8, 8)
    a = draw_noise(lat, 1000, step_generator(3, 5, 0, 0))
    b = draw_noise(lat, 1000, step_generator(3, 5, 0, 0))
    c = draw_noise(lat, 1000, step_generator(3, 5, 1, 0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def test_lora_dpo_uses_the_adapter_disabled_model_not_a_copy(monkeypatch):
    import gc

    from diffusers import UNet2DConditionModel

    gc.collect()
    unets_before = sum(isinstance(o, UNet2DConditionModel) for o in gc.get_objects())
    loads = []
    real_load = UNet2DConditionModel.from_pretrained.__func__
    monkeypatch.setattr(UNet2DConditionModel, "from_pretrained",
                        classmethod(lambda cls, *a, **k: loads.append(k.get("subfolder")) or real_load(cls, *a, **k)))
    deep_copies = []
    real_deepcopy = copy.deepcopy
    monkeypatch.setattr(copy, "deepcopy",
                        lambda x, *a: (isinstance(x, torch.nn.Module) and deep_copies.append(type(x)))
                        or real_deepcopy(x, *a))
    _, models, obj = _setup(objective="dpo", lora_rank=4)
    gc.collect()
    assert models.reference is None and not deep_copies and loads == ["unet"]  # one UNet in memory
    assert sum(isinstance(o, UNet2DConditionModel) for o in gc.get_objects()) == unets_before + 1
    batch = real_batch()
    out = _loss(models, obj, batch, lora=True)
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-3)  # LoRA B starts at 0: policy == reference
    out.loss.backward()
    trainable = {n for n, p in models.unet.named_parameters() if p.requires_grad}
    assert trainable and all("lora" in n for n in trainable)
    assert all(p.grad is None for n, p in models.unet.named_parameters() if n not in trainable)
    # After a step away from the base, the reference (adapter off) still gives the base model's errors.
    with torch.no_grad():
        for n, p in models.unet.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    out2 = _loss(models, obj, batch, lora=True)
    assert out2.metrics["ref_e_w"] == out.metrics["ref_e_w"] and out2.metrics["e_w"] != out.metrics["e_w"]


def test_v_prediction_target_is_used():
    from diffusers import DDPMScheduler

    _, models, _ = _setup(model="tiny-sd15")
    batch = real_batch("tiny-sd15")
    v_sched = DDPMScheduler.from_config(models.noise_scheduler.config, prediction_type="v_prediction")
    eps = Objective("sft", None, 1000, "epsilon")
    v = Objective("sft", None, 1000, "v_prediction")
    noise, t = draw_noise(batch["latents"], 1000, step_generator(0, 0, 0, 0))
    _, _, target_eps, _ = unet_inputs(batch, noise, t, models.noise_scheduler, eps)
    _, _, target_v, _ = unet_inputs(batch, noise, t, v_sched, v)
    acp = v_sched.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    assert torch.equal(target_eps, noise)
    assert torch.allclose(target_v, acp.sqrt() * noise - (1 - acp).sqrt() * batch["latents"][:, 0], atol=1e-6)


@pytest.mark.parametrize("objective", ["mapo", "dpo"])
def test_gradient_matches_finite_differences(objective):
    """d loss / d theta along one direction, autograd vs central differences, in float64."""
    torch.manual_seed(0)
    _, models, obj = _setup("tiny-sd15", objective)
    models.unet.double()
    if models.reference is not None:
        models.reference.double()
        with torch.no_grad():  # move the policy away from the reference so DPO's d != 0
            models.unet.conv_out.bias.add_(0.01)
    batch = {k: v.double() for k, v in real_batch("tiny-sd15").items()}
    if objective == "mapo":  # make the margin term matter: T*margin of order 1
        obj = Objective("mapo", 1.0, 1, "epsilon")
    param = models.unet.conv_out.weight
    direction = torch.randn_like(param)

    def loss():
        gen = step_generator(0, 0, 0, 0)
        return compute_loss(models.unet, batch, models.noise_scheduler, obj, gen, reference=models.reference).loss

    loss().backward()
    analytic = (param.grad * direction).sum().item()
    h = 1e-6
    with torch.no_grad():
        param.add_(h * direction)
        up = loss().item()
        param.sub_(2 * h * direction)
        down = loss().item()
        param.add_(h * direction)
    assert analytic != 0
    assert (up - down) / (2 * h) == pytest.approx(analytic, rel=1e-5)


@pytest.mark.parametrize("model", ["tiny-sdxl", "tiny-sd15"])
def test_full_dpo_under_bf16_autocast_starts_at_ln2(model):
    """The reference runs exactly the policy's computation at step 0 (same weights dtype, same autocast)."""
    cfg = TrainConfig(data="x", model=model, objective="dpo", mixed_precision="bf16")
    models = setup_models(cfg, torch.bfloat16, torch.device("cpu"))
    obj = Objective("dpo", cfg.resolved_beta, models.num_train_timesteps, models.prediction_type)
    batch = real_batch(model)  # fp32, as the trainer feeds it: made outside the autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = compute_loss(models.unet, batch, models.noise_scheduler, obj, step_generator(0, 0, 0, 0),
                           reference=models.reference)
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert out.metrics["implicit_acc"] == 0 and out.metrics["reward_margin"] == 0
    assert out.metrics["ref_e_w"] == out.metrics["e_w"]

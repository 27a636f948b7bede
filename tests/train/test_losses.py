"""Loss tests of DPO, SFT, Diffusion-KTO and SPO, their shared checks, metrics and targets (MaPO's loss:
test_mapo_loss.py). Expected numbers are worked out by hand (in the comments) and recomputed with ``math`` here,
never by calling the code under test."""

import math

import pytest
import torch

from tests.train.loss_refs import sigmoid_ref, t32, t64
from train.losses import (
    dpo_loss,
    kto_loss,
    mapo_loss,
    per_sample_error,
    prediction_target,
    sft_loss,
    spo_loss,
)
from train.objectives import names as objective_names


@pytest.mark.parametrize(
    "e_w, e_l",
    [
        (torch.zeros(2), torch.zeros(3)),  # different B
        (torch.zeros(2, 1), torch.zeros(2, 1)),  # not [B]
        (torch.zeros(()), torch.zeros(())),  # scalar
        (torch.zeros(0), torch.zeros(0)),  # empty batch
    ],
)
def test_losses_reject_bad_shapes(e_w, e_l):
    with pytest.raises(ValueError, match="shape"):
        mapo_loss(e_w, e_l)
    with pytest.raises(ValueError, match="shape"):
        dpo_loss(e_w, e_l, e_w, e_l)


@pytest.mark.parametrize("e", [torch.zeros(2, 1), torch.zeros(()), torch.zeros(0)])
def test_sft_loss_rejects_bad_shapes(e):
    with pytest.raises(ValueError, match="shape"):
        sft_loss(e)


# --------------------------------------------------------------------------- dpo_loss


def test_dpo_loss_zero_difference_is_ln2():
    # d = 0 for every pair: loss = -logsigmoid(0) = ln 2 = 0.693147181, whatever beta
    for beta in (1.0, 5000.0):
        out = dpo_loss(t32(0.3, 0.7), t32(0.5, 0.2), t32(0.3, 0.7), t32(0.5, 0.2), beta=beta)
        assert out.loss.item() == pytest.approx(math.log(2), rel=1e-6)
        assert out.metrics["reward_margin"].item() == 0.0
        assert out.metrics["implicit_acc"].item() == 0.0  # d < 0 is strict


def test_dpo_loss_by_hand_and_beta_scaling():
    # one pair: d = (0.3 - 0.5) - (0.4 - 0.4) = -0.2
    # beta=10: logit = -(10/2)*(-0.2) = 1, loss = log(1 + e^-1) = 0.313261688
    # beta=20: logit = 2, loss = log(1 + e^-2) = 0.126928011
    args = (t64(0.3), t64(0.5), t64(0.4), t64(0.4))
    out = dpo_loss(*args, beta=10.0)
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-1)), rel=1e-12)
    assert out.metrics["reward_margin"].item() == pytest.approx(1.0, rel=1e-6)
    assert out.metrics["implicit_acc"].item() == 1.0
    assert dpo_loss(*args, beta=20.0).loss.item() == pytest.approx(math.log1p(math.exp(-2)), rel=1e-12)


def test_dpo_loss_two_pairs_by_hand():
    # pair 1: d = (0.3-0.5) - (0.4-0.4) = -0.2  -> logit = 5*0.2 = 1.0,   -logsigmoid = 0.313261688
    # pair 2: d = (0.5-0.5) - (0.45-0.5) = 0.05 -> logit = -5*0.05 = -0.25, -logsigmoid = log(1+e^0.25) = 0.825939420
    # loss = (0.313261688 + 0.825939420)/2 = 0.569600554; reward_margin = (1 - 0.25)/2 = 0.375; acc = 1/2
    out = dpo_loss(t64(0.3, 0.5), t64(0.5, 0.5), t64(0.4, 0.45), t64(0.4, 0.5), beta=10.0)
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.25))) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    m = out.metrics
    assert m["reward_margin"].item() == pytest.approx(0.375, rel=1e-6)
    assert m["implicit_acc"].item() == 0.5
    assert m["e_w"].item() == pytest.approx(0.4, rel=1e-6)
    assert m["e_l"].item() == pytest.approx(0.5, rel=1e-6)
    assert m["ref_e_w"].item() == pytest.approx(0.425, rel=1e-6)
    assert m["ref_e_l"].item() == pytest.approx(0.45, rel=1e-6)


def test_dpo_loss_reference_is_detached():
    e_w, e_l = t64(0.3, 0.5).requires_grad_(), t64(0.5, 0.5).requires_grad_()
    ref_w, ref_l = t64(0.4, 0.45).requires_grad_(), t64(0.4, 0.5).requires_grad_()
    dpo_loss(e_w, e_l, ref_w, ref_l, beta=10.0).loss.backward()
    assert ref_w.grad is None and ref_l.grad is None
    assert e_w.grad is not None and e_l.grad is not None
    # d loss/d e_w_i = -(1/B) * sigmoid(-logit_i) * (-beta/2) = (5/2) * sigmoid(-logit_i)
    # pair 1: logit 1 -> 2.5 * sigmoid(-1) = 2.5 * 0.268941421 = 0.672353553
    assert e_w.grad[0].item() == pytest.approx(2.5 / (1 + math.e), rel=1e-12)
    assert e_l.grad[0].item() == pytest.approx(-2.5 / (1 + math.e), rel=1e-12)


def test_dpo_loss_default_beta_is_finite_for_large_d():
    # beta=5000, d = +-1: logit = -+2500; loss ~ 2500/2 (one pair saturated each way)
    out = dpo_loss(t32(1.0, 0.0), t32(0.0, 1.0), t32(0.0, 0.0), t32(0.0, 0.0))
    assert out.loss.item() == pytest.approx(2500 / 2, rel=1e-6)


def test_dpo_loss_gradcheck():
    ref_w, ref_l = t64(0.4, 0.45, 0.1), t64(0.4, 0.5, 0.3)
    e_w = t64(0.3, 0.5, 0.2).requires_grad_()
    e_l = t64(0.5, 0.5, 0.25).requires_grad_()
    fn = lambda w, lose: dpo_loss(w, lose, ref_w, ref_l, beta=10.0).loss  # noqa: E731
    assert torch.autograd.gradcheck(fn, (e_w, e_l))


def test_dpo_loss_rejects_bad_beta():
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(t32(0.1), t32(0.2), t32(0.1), t32(0.2), beta=0.0)


# --------------------------------------------------------------------------- sft_loss


@pytest.mark.parametrize("lr, warned", [
    (2.048e-5, False),  # the public recipe: 1e-8 x batch 2048
    (1e-5, False),  # mapo-train's default learning rate
    (1e-4, False),  # exactly at the threshold
    (2e-4, True),  # make fidelity-full: every DPO run at 2e-4 lost prompt following
])
def test_dpo_learning_rate_warning_above_5x_the_public_recipe(lr, warned):
    from train.losses import dpo_learning_rate_warning

    message = dpo_learning_rate_warning(5000.0, lr)
    assert (message is not None) == warned
    if warned:
        assert message.startswith("warning: ") and "\n" not in message and "to 0.0001 or less" in message


def test_sft_loss_by_hand():
    # mean(0.1, 0.2, 0.6) = 0.3
    out = sft_loss(t64(0.1, 0.2, 0.6))
    assert out.loss.item() == pytest.approx(0.3, rel=1e-12)
    assert set(out.metrics) == {"loss", "e_w"}
    assert out.metrics["e_w"].item() == pytest.approx(0.3, rel=1e-6)


def test_sft_loss_gradcheck():
    assert torch.autograd.gradcheck(lambda e: sft_loss(e).loss, (t64(0.1, 0.2, 0.6).requires_grad_(),))


KTO_E, KTO_REF, KTO_LABELS = t64(0.2, 0.5, 0.4, 0.3), t64(0.3, 0.4, 0.4, 0.5), torch.tensor([1, 1, 0, 0])


def test_kto_loss_by_hand_batch_reference_point():
    # g = ref - e = [0.1, -0.1, 0.0, 0.2]; z = mean(g) = 0.05; beta 10: logits = 10 (g - z) = [0.5, -1.5, -0.5, 1.5]
    # desirable (0, 1): 1 - sig(0.5), 1 - sig(-1.5); undesirable (2, 3): 1 - sig(0.5), 1 - sig(-1.5)
    # (1 - sig(-x) with x = -0.5 and 1.5). lambda_d 2, lambda_u 0.5.
    a, b = 1 - sigmoid_ref(0.5), 1 - sigmoid_ref(-1.5)  # 0.3775406688, 0.8175744762
    out = kto_loss(KTO_E, KTO_REF, KTO_LABELS, beta=10.0, lambda_desirable=2.0, lambda_undesirable=0.5)
    assert out.loss.item() == pytest.approx((2 * (a + b) + 0.5 * (a + b)) / 4, rel=1e-12)  # 0.7469469
    m = {k: v.item() for k, v in out.metrics.items()}
    assert m["kl"] == pytest.approx(0.05, rel=1e-6)
    assert m["e"] == pytest.approx(0.35, rel=1e-6) and m["ref_e"] == pytest.approx(0.4, rel=1e-6)
    assert m["reward_desirable"] == pytest.approx(0.0, abs=1e-7)  # (0.1 - 0.1) / 2
    assert m["reward_undesirable"] == pytest.approx(0.1, rel=1e-6)  # (0.0 + 0.2) / 2
    assert m["e_desirable"] == pytest.approx(0.35, rel=1e-6) and m["e_undesirable"] == pytest.approx(0.35, rel=1e-6)
    # sign * (g - z) > 0: desirable 0 (+0.05) yes, 1 (-0.15) no; undesirable 2 (+0.05) yes, 3 (-0.15) no
    assert m["implicit_acc"] == 0.5 and m["desirable_fraction"] == 0.5


def test_kto_loss_reference_point_is_clamped_at_zero():
    # g = [0.4 - 0.6, 0.4 - 0.3] = [-0.2, 0.1]: mean -0.05 -> z = 0; logits (beta 10) = [-2, 1]
    # desirable: 1 - sig(-2); undesirable: 1 - sig(-1)
    out = kto_loss(t64(0.6, 0.3), t64(0.4, 0.4), torch.tensor([True, False]), beta=10.0)
    assert out.loss.item() == pytest.approx((1 - sigmoid_ref(-2) + 1 - sigmoid_ref(-1)) / 2, rel=1e-12)
    assert out.metrics["kl"].item() == 0.0
    # One example per class: the class means are the examples' own values.
    assert (
        out.metrics["e_desirable"].item() == pytest.approx(0.6)
        and out.metrics["reward_undesirable"].item() == pytest.approx(0.1)
    )
    # A batch with one class only did not measure the other: its means are NaN (not measured), not 0, which the
    # trainer would average in with the micro-batches that did measure it.
    one = kto_loss(t64(0.6, 0.3), t64(0.4, 0.4), torch.tensor([1, 1]), beta=10.0).metrics
    assert math.isnan(one["reward_undesirable"].item()) and math.isnan(one["e_undesirable"].item())
    assert one["e_desirable"].item() == pytest.approx(0.45) and one["desirable_fraction"].item() == 1.0
    none = kto_loss(t64(0.6, 0.3), t64(0.4, 0.4), torch.tensor([0, 0]), beta=10.0).metrics
    assert math.isnan(none["reward_desirable"].item()) and none["e_undesirable"].item() == pytest.approx(0.45)
    # A passed-in (cross-process) mean is clamped the same way.
    assert kto_loss(KTO_E, KTO_REF, KTO_LABELS, beta=10.0, kl=t64(-3.0)).metrics["kl"].item() == 0.0


def test_kto_loss_takes_the_cross_process_mean_when_given():
    # kl = 0.25 (other processes' g pulled the mean up): logits = 10 (g - 0.25) = [-1.5, -3.5, -2.5, -0.5]
    # desirable: 1 - sig(-1.5), 1 - sig(-3.5); undesirable: 1 - sig(2.5), 1 - sig(0.5)
    want = (1 - sigmoid_ref(-1.5) + 1 - sigmoid_ref(-3.5) + 1 - sigmoid_ref(2.5) + 1 - sigmoid_ref(0.5)) / 4
    out = kto_loss(KTO_E, KTO_REF, KTO_LABELS, beta=10.0, kl=t64(0.25))
    assert out.loss.item() == pytest.approx(want, rel=1e-12)
    assert out.metrics["kl"].item() == pytest.approx(0.25)
    assert out.metrics["implicit_acc"].item() == 0.5  # undesirable examples are both below z
    # kl = the batch's own mean gives exactly the kl=None result.
    own = kto_loss(KTO_E, KTO_REF, KTO_LABELS, beta=10.0, kl=(KTO_REF - KTO_E).mean())
    assert own.loss.item() == kto_loss(KTO_E, KTO_REF, KTO_LABELS, beta=10.0).loss.item()


def test_kto_loss_gradient_treats_z_and_reference_as_constants():
    # With z constant, x_i = logits_i, sig' = sig (1 - sig) (even in x):
    # desirable:   d/dg [1 - sig(x)]  = -beta sig'(x), dg/de = -1 -> d loss / d e_i = +(1/N) lambda_d beta sig'(x_i)
    # undesirable: d/dg [1 - sig(-x)] = +beta sig'(x)            -> d loss / d e_i = -(1/N) lambda_u beta sig'(x_i)
    # (gradient descent lowers desirable errors, raises undesirable ones). If z = mean(g) carried a
    # gradient, every e_i would get an extra -mean of these terms.
    e = KTO_E.clone().requires_grad_()
    ref = KTO_REF.clone().requires_grad_()
    kto_loss(e, ref, KTO_LABELS, beta=10.0, lambda_desirable=2.0, lambda_undesirable=0.5).loss.backward()
    lam = [2.0, 2.0, -0.5, -0.5]  # lambda_i times the sign above
    want = [lam[i] * 10 * sigmoid_ref(x) * (1 - sigmoid_ref(x)) / 4 for i, x in enumerate([0.5, -1.5, -0.5, 1.5])]
    assert e.grad.tolist() == pytest.approx(want, rel=1e-10)
    assert ref.grad is None


def test_kto_loss_default_beta_saturates_without_nan():
    # beta 1000 (the public code's): |g - z| = 0.1 gives logits of 100; sigmoid saturates to 0 / 1 exactly.
    out = kto_loss(t32(0.1, 0.3), t32(0.3, 0.1), torch.tensor([1, 0]))
    assert torch.isfinite(out.loss) and out.loss.item() == pytest.approx(0.0, abs=1e-30)
    assert kto_loss(t32(0.3, 0.1), t32(0.1, 0.3), torch.tensor([1, 0])).loss.item() == 1.0


def test_kto_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="0 or 1"):
        kto_loss(t64(0.1, 0.2), t64(0.1, 0.2), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="shape"):
        kto_loss(t64(0.1, 0.2), t64(0.1), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="scalar"):
        kto_loss(t64(0.1, 0.2), t64(0.1, 0.2), torch.tensor([1, 0]), kl=t64(0.1, 0.2))
    for kwargs in ({"beta": 0.0}, {"lambda_desirable": -1.0}, {"lambda_undesirable": 0.0}):
        with pytest.raises(ValueError, match="must be > 0"):
            kto_loss(t64(0.1, 0.2), t64(0.1, 0.2), torch.tensor([1, 0]), **kwargs)


def test_kto_loss_gradcheck():
    ref, labels = t64(0.3, 0.2, 0.5), torch.tensor([1, 0, 1])
    assert torch.autograd.gradcheck(lambda e: kto_loss(e, ref, labels, beta=3.0).loss,
                                    (t64(0.25, 0.4, 0.45).requires_grad_(),))


# --------------------------------------------------------------------------- metrics


def _all_outputs():
    ew = t64(0.2, 1.0).requires_grad_()
    el = t64(0.4, 0.6).requires_grad_()
    return {
        "mapo": mapo_loss(ew, el, num_train_timesteps=10),
        "dpo": dpo_loss(ew, el, t64(0.3, 0.7), t64(0.5, 0.2), beta=10.0),
        "sft": sft_loss(ew),
        "kto": kto_loss(ew, t64(0.3, 0.7), torch.tensor([1, 0]), beta=10.0),
        "spo": spo_loss(ew, el, t64(0.3, 0.7), t64(0.5, 0.2)),
    }


def test_objectives_and_metric_keys():
    outs = _all_outputs()
    assert set(outs) == set(objective_names())
    assert set(outs["mapo"].metrics) == {
        "loss", "sft_term", "margin_term", "e_w", "e_l", "s_w", "s_l", "margin", "implicit_acc",
    }
    assert set(outs["dpo"].metrics) == {
        "loss", "e_w", "e_l", "ref_e_w", "ref_e_l", "implicit_acc", "reward_margin",
    }
    assert set(outs["kto"].metrics) == {
        "loss", "e", "ref_e", "kl", "reward_desirable", "reward_undesirable", "e_desirable", "e_undesirable",
        "implicit_acc", "desirable_fraction",
    }


def test_metrics_are_detached_fp32_scalars_consistent_with_loss():
    for out in _all_outputs().values():
        assert out.loss.requires_grad and out.loss.ndim == 0
        for name, value in out.metrics.items():
            assert not value.requires_grad, name
            assert value.dtype == torch.float32 and value.ndim == 0, name
        assert out.metrics["loss"].item() == pytest.approx(out.loss.item(), rel=1e-7)
    m = _all_outputs()["mapo"].metrics
    assert m["loss"].item() == pytest.approx((m["sft_term"] + m["margin_term"]).item(), rel=1e-7)
    # The loss is built as sft_term + margin_term, so in the training dtype (fp32) the
    # logged terms add up bit for bit (fp64 inputs round each metric to fp32 separately).
    out = mapo_loss(t32(0.2, 1.0), t32(0.4, 0.6))
    assert torch.equal(out.loss.detach(), out.metrics["sft_term"] + out.metrics["margin_term"])


# --------------------------------------------------------------------------- per_sample_error


def test_per_sample_error_by_hand():
    # sample 0: (1^2 + 3^2)/2 = 5; sample 1: (0 + 2^2)/2 = 2
    pred = t32(1.0, 3.0, 0.0, 2.0).reshape(2, 2)
    assert per_sample_error(pred, torch.zeros(2, 2)).tolist() == [5.0, 2.0]
    # 4-D latents: averaged over C, H, W
    pred = torch.zeros(2, 4, 3, 3)
    pred[0, 0, 0, 0] = 6.0  # 36 / 36 elements = 1
    assert per_sample_error(pred, torch.zeros_like(pred)).tolist() == [1.0, 0.0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_per_sample_error_is_fp32_for_half_inputs(dtype):
    # diff = 300 everywhere: 300^2 = 90000 overflows fp16 (max 65504) but is exact in fp32
    pred = torch.full((2, 4, 8, 8), 300.0, dtype=dtype)
    target = torch.zeros_like(pred)
    target[1] = 298.0  # diff 2 -> error 4 (299 is not representable in bf16)
    e = per_sample_error(pred, target)
    assert e.dtype == torch.float32
    assert e.tolist() == [90000.0, 4.0]


def test_per_sample_error_keeps_gradient_and_rejects_mismatch():
    pred = torch.ones(2, 3, dtype=torch.float16, requires_grad=True)
    per_sample_error(pred, torch.zeros(2, 3, dtype=torch.float16)).sum().backward()
    # d/dpred of mean((pred - 0)^2) over 3 elements = 2*1/3
    assert pred.grad.dtype == torch.float16
    assert pred.grad.float().flatten().tolist() == pytest.approx([2 / 3] * 6, rel=1e-3)
    with pytest.raises(ValueError, match="same shape"):
        per_sample_error(torch.zeros(2, 3), torch.zeros(2, 4))


# --------------------------------------------------------------------------- prediction_target


def _target_inputs():
    latents = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 2.0)])
    noise = torch.stack([torch.full((1, 2, 2), 0.5), torch.full((1, 2, 2), -1.0)])
    alphas_cumprod = t32(0.9, 0.64, 0.36)
    timesteps = torch.tensor([1, 2])
    return latents, noise, timesteps, alphas_cumprod


def test_prediction_target_epsilon_and_sample():
    latents, noise, timesteps, acp = _target_inputs()
    assert prediction_target("epsilon", latents, noise, timesteps, acp) is noise
    assert prediction_target("sample", latents, noise, timesteps, acp) is latents


def test_prediction_target_v_by_hand():
    # sample 0: t=1, acp=0.64 -> sqrt 0.8, sqrt(1-acp) 0.6: v = 0.8*0.5 - 0.6*1.0 = -0.2
    # sample 1: t=2, acp=0.36 -> sqrt 0.6, sqrt(1-acp) 0.8: v = 0.6*(-1) - 0.8*2.0 = -2.2
    latents, noise, timesteps, acp = _target_inputs()
    v = prediction_target("v_prediction", latents, noise, timesteps, acp)
    assert v.shape == latents.shape and v.dtype == torch.float32
    assert v[0].flatten().tolist() == pytest.approx([-0.2] * 4, abs=1e-6)
    assert v[1].flatten().tolist() == pytest.approx([-2.2] * 4, abs=1e-6)
    # half-precision latents still give an fp32 target
    v16 = prediction_target("v_prediction", latents.half(), noise.half(), timesteps, acp)
    assert v16.dtype == torch.float32
    assert v16[1].flatten().tolist() == pytest.approx([-2.2] * 4, abs=1e-6)


def test_prediction_target_unknown_type_raises():
    latents, noise, timesteps, acp = _target_inputs()
    with pytest.raises(ValueError, match="epsilon, v_prediction, sample"):
        prediction_target("flow", latents, noise, timesteps, acp)

"""MaPO's loss (margin weight and ``mapo_loss``). Expected numbers are worked out by hand (in the comments) and
recomputed with ``math`` here, never by calling the code under test. The other objectives' losses: test_losses.py."""

import math

import pytest
import torch

from tests.train.loss_refs import logsigmoid_ref, s_ref, t32, t64
from train.losses import LossOutput, mapo_loss, margin_weight

# --------------------------------------------------------------------------- margin_weight


def test_margin_weight_by_hand():
    # e=2, a=0.5: x=1, s = 1/(e-1) = 1/1.718281828 = 0.5819767068693265
    # e=4, a=0.5: x=2, s = 2/(e^2-1) = 2/6.389056099 = 0.3130352854993313
    # e=2, a=1.0: x=2, same value as above
    got = margin_weight(t64(2.0, 4.0))
    assert got.tolist() == pytest.approx([1 / (math.e - 1), 2 / (math.e**2 - 1)], rel=1e-14)
    assert margin_weight(t64(2.0), a=1.0).item() == pytest.approx(2 / (math.e**2 - 1), rel=1e-14)
    # fp32 stays within fp32 rounding
    assert margin_weight(t32(2.0)).item() == pytest.approx(0.5819767068693265, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_margin_weight_is_exactly_one_at_zero(dtype):
    # The closed form is 0/0 at e=0; the limit is 1 and must come out exactly.
    s = margin_weight(torch.zeros(3, dtype=dtype))
    assert torch.equal(s, torch.ones(3, dtype=dtype))


def test_margin_weight_small_e_is_one_minus_half_x():
    # x/(e^x-1) = 1 - x/2 + x^2/12 - ...; e=1e-3, a=0.5: x=5e-4, s = 1 - 2.5e-4 + 2.1e-8
    e = 1e-3
    s = margin_weight(t64(e)).item()
    assert s == pytest.approx(1 - 0.5 * e / 2, abs=1e-7)
    assert s == pytest.approx(s_ref(e), rel=1e-15)


def test_margin_weight_continuous_across_series_switch():
    # The implementation switches to a series at |a*e| = 1e-2 (e = 0.02 for a = 0.5);
    # both sides must agree with the closed form to fp64 precision.
    for e in (0.0199999, 0.02, 0.0200001, 0.019, 0.021):
        assert margin_weight(t64(e)).item() == pytest.approx(s_ref(e), rel=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_margin_weight_huge_e_goes_to_zero_without_nan(dtype):
    # exp(a*e) overflows fp32 past a*e ~ 88; s must underflow to 0, grads stay finite.
    e = torch.tensor([100.0, 200.0, 1e4, 1e30], dtype=dtype, requires_grad=True)
    s = margin_weight(e)
    assert torch.isfinite(s).all()
    assert s[2].item() == 0.0 and s[3].item() == 0.0
    # e=100: s = 50/(e^50-1) = 9.64e-21 (representable in fp32 too)
    assert s[0].item() == pytest.approx(50 * math.exp(-50), rel=1e-5)
    s.sum().backward()
    assert torch.isfinite(e.grad).all()


def test_margin_weight_range_and_monotone():
    e = torch.linspace(0.0, 60.0, 3001, dtype=torch.float64)
    s = margin_weight(e)
    assert (s > 0).all() and (s <= 1).all()
    assert (s.diff() < 0).all()  # strictly decreasing
    # fp32 over a range that includes the overflow region: never increases, never NaN
    e32 = torch.cat([torch.linspace(0.0, 1.0, 101), torch.logspace(0, 5, 101)])
    s32 = margin_weight(e32)
    assert torch.isfinite(s32).all() and (s32.diff() <= 0).all()


def test_margin_weight_gradient_at_zero():
    # s(e) ~ 1 - a*e/2, so ds/de at 0 is -a/2 = -0.25 for a=0.5
    e = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    margin_weight(e).sum().backward()
    assert e.grad.tolist() == pytest.approx([-0.25, -0.25], rel=1e-12)


def test_margin_weight_gradcheck():
    # points on both sides of 0, around the series switch (|a*e| = 1e-2), and large
    e = t64(-3.0, -0.05, -1e-3, 0.0, 1e-6, 1e-4, 0.019, 0.021, 0.5, 2.0, 50.0, 300.0)
    assert torch.autograd.gradcheck(margin_weight, (e.requires_grad_(),))
    assert torch.autograd.gradcheck(lambda x: margin_weight(x, a=2.0), (e.detach().requires_grad_(),))


def test_margin_weight_rejects_bad_a():
    with pytest.raises(ValueError, match="a must be > 0"):
        margin_weight(t32(1.0), a=0.0)


# --------------------------------------------------------------------------- mapo_loss


def test_mapo_loss_two_pairs_by_hand():
    # a=0.5, beta=0.1, T=10; e_w = [0.2, 1.0], e_l = [0.4, 0.6]
    # s(0.2) = 0.1/(e^0.1-1) = 0.1/0.105170918 = 0.950833194
    # s(1.0) = 0.5/(e^0.5-1) = 0.5/0.648721271 = 0.770747041
    # s(0.4) = 0.2/(e^0.2-1) = 0.2/0.221402758 = 0.903331113
    # s(0.6) = 0.3/(e^0.3-1) = 0.3/0.349858808 = 0.857488774
    # margin = [0.047502081, -0.086741733]; T*margin = [0.475020813, -0.867417328]
    # logsigmoid = [-log(1+0.621872114), -log(1+2.380754199)] = [-0.483581108, -1.218098820]
    # margin_term = -0.1 * mean = 0.1 * 1.701679928 / 2 = 0.085083996
    # sft_term = mean(e_w) = 0.6; loss = 0.685083996
    ew, el = [0.2, 1.0], [0.4, 0.6]
    sw, sl = [s_ref(x) for x in ew], [s_ref(x) for x in el]
    margin = [sw[0] - sl[0], sw[1] - sl[1]]
    margin_term = -0.1 * (logsigmoid_ref(10 * margin[0]) + logsigmoid_ref(10 * margin[1])) / 2
    assert margin_term == pytest.approx(0.085083996, abs=1e-9)

    out = mapo_loss(t64(*ew), t64(*el), beta=0.1, a=0.5, num_train_timesteps=10)
    assert isinstance(out, LossOutput)
    m = out.metrics
    assert out.loss.item() == pytest.approx(0.6 + margin_term, rel=1e-6)
    assert m["sft_term"].item() == pytest.approx(0.6, rel=1e-6)
    assert m["margin_term"].item() == pytest.approx(margin_term, rel=1e-6)
    assert m["e_w"].item() == pytest.approx(0.6, rel=1e-6)
    assert m["e_l"].item() == pytest.approx(0.5, rel=1e-6)
    assert m["s_w"].item() == pytest.approx(sum(sw) / 2, rel=1e-6)
    assert m["s_l"].item() == pytest.approx(sum(sl) / 2, rel=1e-6)
    assert m["margin"].item() == pytest.approx(sum(margin) / 2, rel=1e-6)
    assert m["implicit_acc"].item() == 0.5  # 0.2 < 0.4 yes, 1.0 < 0.6 no


def test_mapo_loss_default_T_saturates():
    # Same pairs, T=1000: T*margin = [47.50, -86.74]
    # logsigmoid(47.50) = -e^-47.5 ~ -2e-21 ~ 0; logsigmoid(-86.74) ~ -86.74
    # margin_term ~ 0.1 * 86.74173 / 2 = 4.3370866
    ew, el = [0.2, 1.0], [0.4, 0.6]
    margin = [s_ref(ew[0]) - s_ref(el[0]), s_ref(ew[1]) - s_ref(el[1])]
    expected = -0.1 * (logsigmoid_ref(1000 * margin[0]) + logsigmoid_ref(1000 * margin[1])) / 2
    out = mapo_loss(t32(*ew), t32(*el))
    assert out.metrics["margin_term"].item() == pytest.approx(expected, rel=1e-5)
    assert out.loss.item() == pytest.approx(0.6 + expected, rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mapo_loss_zero_error_limit(dtype):
    # e_w = e_l = 0: s = 1 both, margin 0, logsigmoid(0) = -ln 2
    # loss = 0 - 0.1 * (-ln 2) = 0.1 * 0.693147181 = 0.0693147181
    # d loss/d e_w = 1 - beta * sigmoid(0) * T * s'(0) = 1 + 0.1 * 0.5 * 1000 * 0.25 = 13.5
    # d loss/d e_l = -beta * sigmoid(0) * T * (-s'(0)) = -12.5
    e_w = torch.zeros(1, dtype=dtype, requires_grad=True)
    e_l = torch.zeros(1, dtype=dtype, requires_grad=True)
    out = mapo_loss(e_w, e_l, beta=0.1)
    assert out.loss.item() == pytest.approx(0.1 * math.log(2), rel=1e-6)
    out.loss.backward()
    assert e_w.grad.item() == pytest.approx(13.5, rel=1e-6)
    assert e_l.grad.item() == pytest.approx(-12.5, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mapo_loss_large_margins_both_ways(dtype):
    # e_w=0, e_l=100: s_w=1, s_l=50 e^-50 = 9.6e-21, T*margin = 1000 -> logsigmoid ~ -e^-1000 = 0
    e_w = torch.tensor([0.0], dtype=dtype, requires_grad=True)
    e_l = torch.tensor([100.0], dtype=dtype, requires_grad=True)
    out = mapo_loss(e_w, e_l)
    assert abs(out.metrics["margin_term"].item()) < 1e-30
    assert out.metrics["implicit_acc"].item() == 1.0
    out.loss.backward()
    assert torch.isfinite(e_w.grad).all() and torch.isfinite(e_l.grad).all()

    # e_w=100, e_l=0: T*margin = 1000*(s(100) - 1) ~ -1000, logsigmoid ~ -1000
    # margin_term = beta*T*(1 - s(100)) = 0.1*1000*(1 - 9.6e-21) = 100; loss = 100 + 100
    e_w = torch.tensor([100.0], dtype=dtype, requires_grad=True)
    e_l = torch.tensor([0.0], dtype=dtype, requires_grad=True)
    out = mapo_loss(e_w, e_l)
    expected = 0.1 * 1000 * (1 - s_ref(100.0))
    assert out.metrics["margin_term"].item() == pytest.approx(expected, rel=1e-6)
    assert out.loss.item() == pytest.approx(100.0 + expected, rel=1e-6)
    assert out.metrics["implicit_acc"].item() == 0.0
    out.loss.backward()
    assert torch.isfinite(e_w.grad).all() and torch.isfinite(e_l.grad).all()

    # fp32 overflow region of exp: e = 1e4
    e_w = torch.tensor([1e4, 0.0], dtype=dtype, requires_grad=True)
    e_l = torch.tensor([0.0, 1e4], dtype=dtype, requires_grad=True)
    out = mapo_loss(e_w, e_l)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(e_w.grad).all() and torch.isfinite(e_l.grad).all()


def test_mapo_loss_implicit_acc_counts_strict_wins():
    # pairs: 0.1<0.2 yes, 0.5<0.4 no, 0.3<0.3 no (tie), 0.2<0.9 yes -> 2/4
    out = mapo_loss(t32(0.1, 0.5, 0.3, 0.2), t32(0.2, 0.4, 0.3, 0.9))
    assert out.metrics["implicit_acc"].item() == 0.5


def test_mapo_loss_gradcheck():
    e_w = t64(0.0, 0.05, 0.3, 1.5).requires_grad_()
    e_l = t64(0.01, 0.0, 0.4, 1.2).requires_grad_()
    # T=10 keeps the logsigmoid off its flat tails, so the check is informative
    fn = lambda w, lose: mapo_loss(w, lose, beta=0.1, a=0.5, num_train_timesteps=10).loss  # noqa: E731
    assert torch.autograd.gradcheck(fn, (e_w, e_l))
    assert torch.autograd.gradcheck(lambda w, lose: mapo_loss(w, lose).loss, (e_w, e_l))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"beta": 0.0}, "beta must be > 0"),
        ({"beta": -1.0}, "beta must be > 0"),
        ({"a": 0.0}, "a must be > 0"),
        ({"num_train_timesteps": 0}, "num_train_timesteps must be >= 1"),
    ],
)
def test_mapo_loss_rejects_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mapo_loss(t32(0.1), t32(0.2), **kwargs)

"""Evaluation statistics, checked by hand on small known samples."""
import numpy as np
import pytest

from evaluation.stats import bootstrap_ci, pair_outcomes, rate_ci, win_rate


def one_each(n):
    """Each value its own prompt (independent values)."""
    return list(range(n))


def test_win_rate_counts_ties_as_half():
    base = [1.0, 2.0, 3.0, 4.0, 5.0]
    cand = [2.0, 2.0, 1.0, 4.5, 5.0]  # win, tie, loss, win, tie
    w = win_rate(cand, base, one_each(5))
    assert (w.wins, w.ties, w.losses, w.n) == (2, 2, 1, 5)
    assert w.rate == pytest.approx((2 + 0.5 * 2) / 5)  # 0.6
    assert pair_outcomes(cand, base).tolist() == [1.0, 0.5, 0.0, 1.0, 0.5]


def test_win_rate_lower_is_better_flips_wins_and_losses():
    base = [0.0, 0.9, 0.3]
    cand = [0.0, 0.1, 0.7]  # tie, win (safer), loss
    w = win_rate(cand, base, one_each(3), higher_is_better=False)
    assert (w.wins, w.ties, w.losses) == (1, 1, 1)
    assert w.rate == pytest.approx(0.5)


def test_win_rate_all_ties_is_one_half_with_zero_width_interval():
    w = win_rate([0.0] * 4, [0.0] * 4, one_each(4))
    assert (w.rate, w.low, w.high) == (0.5, 0.5, 0.5)


def test_win_rate_needs_paired_samples():
    with pytest.raises(ValueError):
        win_rate([1.0, 2.0], [1.0], one_each(2))


def test_bootstrap_on_two_point_sample():
    # Resampled means of {0, 1} (n=2) are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5th
    # percentile is 0 and the 97.5th is 1 once enough resamples are drawn; the mean is 0.5.
    ci = bootstrap_ci([0.0, 1.0], one_each(2), resamples=4000)
    assert (ci.estimate, ci.low, ci.high, ci.n) == (0.5, 0.0, 1.0, 2)


def test_bootstrap_on_known_sample_matches_hand_computation():
    # Sample 1..10, mean 5.5, sd (ddof=0) 2.8723: the bootstrap mean has sd 2.8723/sqrt(10) = 0.908,
    # so the 95% percentile interval is about 5.5 -/+ 1.96 * 0.908 = [3.72, 7.28].
    x = np.arange(1, 11, dtype=float)
    ci = bootstrap_ci(x, one_each(10), resamples=20000, seed=1)
    assert ci.estimate == pytest.approx(5.5)
    assert ci.low == pytest.approx(3.72, abs=0.12)
    assert ci.high == pytest.approx(7.28, abs=0.12)
    # Seeded: the same call gives the same interval; another seed a slightly different one.
    assert bootstrap_ci(x, one_each(10), resamples=20000, seed=1) == ci
    assert bootstrap_ci(x, one_each(10), resamples=500, seed=2) != bootstrap_ci(x, one_each(10), resamples=500, seed=3)


def test_bootstrap_constant_single_and_empty():
    assert bootstrap_ci([3.0, 3.0, 3.0], "aab").as_dict() == {
        "estimate": 3.0, "low": 3.0, "high": 3.0, "n": 3, "dropped": 0}
    assert bootstrap_ci([7.0], ["p"]).as_dict() == {"estimate": 7.0, "low": 7.0, "high": 7.0, "n": 1, "dropped": 0}
    empty = bootstrap_ci([], [])
    assert empty.n == 0 and np.isnan(empty.estimate)


def test_bootstrap_narrower_interval_for_lower_confidence():
    x = [0.1, 0.4, 0.35, 0.8, 0.55, 0.2, 0.9, 0.6]
    wide, narrow = bootstrap_ci(x, one_each(8), 0.95), bootstrap_ci(x, one_each(8), 0.5)
    assert wide.low < narrow.low < narrow.high < wide.high


def test_wilson_interval_matches_the_textbook_and_does_not_collapse_at_zero():
    from evaluation.stats import wilson_interval

    assert wilson_interval(0, 96) == pytest.approx((0.0, 0.0384), abs=1e-4)  # 0/96: not [0, 0]
    assert wilson_interval(96, 96)[0] == pytest.approx(1 - 0.0384, abs=1e-4)
    low, high = wilson_interval(8, 10)  # Brown, Cai & DasGupta (2001): 0.8 of 10 -> [0.490, 0.943]
    assert (low, high) == pytest.approx((0.490, 0.943), abs=1e-3)


def test_bootstrap_over_prompts_is_wider_when_a_prompt_s_seeds_agree():
    # 12 prompts x 8 seeds; whole prompts succeed or fail together: 96 images, but 12 independent draws
    values = [float(p < 9) for p in range(12) for _ in range(8)]
    prompts = [p for p in range(12) for _ in range(8)]
    by_image, by_prompt = bootstrap_ci(values, one_each(96)), bootstrap_ci(values, groups=prompts)
    assert by_image.estimate == by_prompt.estimate == 0.75
    assert (by_prompt.high - by_prompt.low) > 1.8 * (by_image.high - by_image.low)
    same = bootstrap_ci([0.1] * 30, groups=[i // 3 for i in range(30)])  # rounding must not put the mean outside
    assert same.low <= same.estimate <= same.high
    with pytest.raises(ValueError, match="group labels"):
        bootstrap_ci(values, groups=prompts[:-1])


# --- issue 24, item 3: every interval is one bootstrap over prompts -----------------------------

SIX_BY_EIGHT = [p for p in range(6) for _ in range(8)]  # 6 prompts x 8 seeds


def test_win_rate_interval_draws_whole_prompts():
    # The candidate wins every seed of prompts 0-2 and loses every seed of 3-5. Resampling the 6 prompts,
    # the rate is k/6 with k ~ Binomial(6, 1/2): P(k = 0) = 1/64 < 2.5% < P(k <= 1) = 7/64, so the
    # 95% interval is [1/6, 5/6] = [0.167, 0.833]; drawing the 48 images one by one gave [0.354, 0.646].
    base = [0.0] * 48
    cand = [1.0 if p < 3 else -1.0 for p in SIX_BY_EIGHT]
    w = win_rate(cand, base, SIX_BY_EIGHT)
    assert (w.rate, w.wins, w.losses, w.n) == (0.5, 24, 24, 48)
    assert (w.low, w.high) == pytest.approx((1 / 6, 5 / 6))
    by_image = win_rate(cand, base, one_each(48))
    assert by_image.high - by_image.low < 0.35  # the narrow interval the old call gave


def test_mean_and_rate_intervals_draw_whole_prompts_too():
    # Neighbours of the win rate: a mean and a thresholded rate of the same 6 x 8 design
    values = [1.0 if p < 3 else 0.0 for p in SIX_BY_EIGHT]
    mean = bootstrap_ci(values, SIX_BY_EIGHT)
    assert (mean.estimate, mean.low, mean.high) == pytest.approx((0.5, 1 / 6, 5 / 6))
    rate = rate_ci(values, SIX_BY_EIGHT, threshold=0.5)
    assert (rate.estimate, rate.n) == (0.5, 48)
    assert rate.low <= 1 / 6 and rate.high >= 5 / 6


def test_groups_are_required():
    with pytest.raises(TypeError):
        bootstrap_ci([1.0, 2.0])  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        win_rate([1.0], [0.0])  # type: ignore[call-arg]


# --- issue 24, item 1: a non-finite score is never a tie, a win, a loss or part of a mean -------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_pair_is_dropped_not_a_tie(bad):
    base = [1.0, 2.0, 3.0, 4.0]
    cand = [2.0, bad, 1.0, 4.0]  # win, (dropped), loss, tie
    assert np.isnan(pair_outcomes(cand, base)[1])
    w = win_rate(cand, base, one_each(4))
    assert (w.wins, w.ties, w.losses, w.n, w.dropped) == (1, 1, 1, 3, 1)
    assert w.rate == pytest.approx(0.5)
    w = win_rate(base, cand, one_each(4), higher_is_better=False)  # the base side non-finite, lower is better
    assert (w.wins, w.ties, w.losses, w.n, w.dropped) == (1, 1, 1, 3, 1)


def test_non_finite_values_are_left_out_of_means_and_rates_and_counted():
    nan = float("nan")
    ci = bootstrap_ci([1.0, nan, 3.0, float("inf")], ["a", "a", "b", "b"])
    assert (ci.estimate, ci.n, ci.dropped) == (2.0, 2, 2)
    assert np.isfinite([ci.low, ci.high]).all()
    # A NaN is not "below every threshold": a rate over 3 finite values, 2 above 0.5
    r = rate_ci([0.9, nan, 0.8, 0.1], one_each(4), threshold=0.5)
    assert (r.estimate, r.n, r.dropped) == (pytest.approx(2 / 3), 3, 1)
    allbad = bootstrap_ci([nan, nan], [0, 1])
    assert allbad.n == 0 and allbad.dropped == 2 and np.isnan(allbad.estimate)

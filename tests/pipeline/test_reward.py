"""Reward labels' arithmetic and pairing rule, on hand-made scores (numbers worked out by hand)."""
import math

import pytest

from pipeline.errors import UserError
from pipeline.judges.reward import (
    NEAR_TIE,
    TIE,
    CandidatePair,
    Scale,
    combine,
    fit_scales,
    gap_bins,
    gap_histogram,
    pair_candidates,
    parse_reward,
    reward_text,
)

JUDGES = ("pickscore", "hps", "aesthetic", "world-prompt")


@pytest.mark.parametrize("spec, weights", [
    ("pickscore", {"pickscore": 1.0}),
    (" hps ", {"hps": 1.0}),
    ("pickscore:2", {"pickscore": 2.0}),
    ("pickscore:1,hps:0.5", {"pickscore": 1.0, "hps": 0.5}),
    ("hps:0.5, pickscore:1", {"hps": 0.5, "pickscore": 1.0}),  # the order given is kept
])
def test_parse_reward(spec, weights):
    assert parse_reward(spec, JUDGES) == weights
    assert list(parse_reward(spec, JUDGES)) == list(weights)


@pytest.mark.parametrize("spec, message", [
    ("", "--reward is empty"),
    ("laion", "unknown judge 'laion' in --reward; choose from pickscore, hps"),
    ("pickscore,hps", "give each a weight, e.g. 'pickscore:1,hps:1'"),
    ("pickscore:1,hps", "give each a weight"),
    ("pickscore:x", "must be a number, got 'x'"),
    ("pickscore:0", "must be > 0"),
    ("pickscore:-1,hps:1", "must be > 0"),
    ("pickscore:nan", "must be > 0"),
    ("hps:1,hps:2", "named twice"),
])
def test_parse_reward_refuses_bad_text_in_one_line(spec, message):
    with pytest.raises(UserError, match=message) as err:
        parse_reward(spec, JUDGES)
    assert "\n" not in str(err.value)


def test_reward_text_is_canonical():
    assert reward_text({"pickscore": 1.0, "hps": 0.5}) == "pickscore:1,hps:0.5"
    assert reward_text(parse_reward("hps", JUDGES)) == "hps:1"


def test_fit_scales_population_std_and_constant_judges():
    scales = fit_scales({"a": [2, 4, 4, 4, 5, 5, 7, 9], "b": [10, 20], "flat": [3, 3, 3], "one": [7]})
    assert scales["a"] == Scale(5.0, 2.0, 8)  # mean 40/8; variance (9+1+1+1+0+0+4+16)/8 = 4
    assert scales["b"] == Scale(15.0, 5.0, 2)
    assert scales["flat"] == Scale(3.0, 1.0, 3) and scales["one"] == Scale(7.0, 1.0, 1)  # std 0 -> 1
    with pytest.raises(ValueError, match="no calibration score"):
        fit_scales({"a": []})


def test_combine_standardises_weights_and_turns_lower_is_better_around():
    # a: mean 2, std 1 -> z = [-1, 0, 1]; b: mean 20, std 10 -> z = [1, -1, 0].
    raw = {"a": [1, 2, 3], "b": [30, 10, 20]}
    scales = {"a": Scale(2, 1, 3), "b": Scale(20, 10, 3)}
    up = {"a": True, "b": True}
    assert combine(raw, {"a": 1.0, "b": 0.5}, scales, up) == [-0.5, -0.5, 1.0]  # -1+0.5, 0-0.5, 1+0
    assert combine(raw, {"a": 1.0}, scales, up) == [-1.0, 0.0, 1.0]  # b not in the reward: not summed
    # b lower-is-better (like world-unsafe): its z-scores count negated.
    assert combine(raw, {"a": 1.0, "b": 0.5}, scales, {"a": True, "b": False}) == [-1.5, 0.5, 1.0]
    with pytest.raises(ValueError, match="different numbers of images"):
        combine({"a": [1, 2], "b": [1]}, {"a": 1.0, "b": 1.0}, scales, up)


def test_best_worst_pairs_the_first_highest_with_the_first_lowest():
    (p,) = pair_candidates([-0.5, -0.5, 1.0])
    assert p == CandidatePair(chosen=2, rejected=0, gap=1.5, reason=None)
    assert (p.first, p.second, p.kept) == (0, 2, True)  # written in candidate order: image 0 is candidate 0
    (p,) = pair_candidates([0.1, 0.9, 0.9, -0.3])
    assert (p.chosen, p.rejected, p.gap, p.kept) == (1, 3, pytest.approx(1.2), True)


def test_best_worst_ties_and_gap_filter():
    (p,) = pair_candidates([0.3, 0.3, 0.3])
    assert p == CandidatePair(0, 1, 0.0, TIE)  # all equal: one tie, dropped and counted
    (p,) = pair_candidates([0.0, 0.5, 0.25], min_gap=0.5)
    assert (p.chosen, p.rejected, p.gap, p.reason) == (1, 0, 0.5, NEAR_TIE)  # kept only ABOVE the gap
    (p,) = pair_candidates([0.0, 0.5, 0.25], min_gap=0.375)
    assert (p.chosen, p.rejected, p.gap, p.reason) == (1, 0, 0.5, None)


def test_all_pairs_in_candidate_order_with_ties_and_near_ties():
    pairs = pair_candidates([-0.5, -0.5, 1.0], rule="all-pairs")
    assert pairs == [CandidatePair(0, 1, 0.0, TIE), CandidatePair(2, 0, 1.5, None), CandidatePair(2, 1, 1.5, None)]
    pairs = pair_candidates([0.0, 1.0, 0.75, 0.5], rule="all-pairs", min_gap=0.25)
    # (0,1) 1.0 kept; (0,2) 0.75 kept; (0,3) 0.5 kept; (1,2) 0.25 near tie; (1,3) 0.5 kept; (2,3) 0.25 near tie.
    assert [(p.chosen, p.rejected, p.gap, p.reason) for p in pairs] == [
        (1, 0, 1.0, None), (2, 0, 0.75, None), (3, 0, 0.5, None), (1, 2, 0.25, NEAR_TIE), (1, 3, 0.5, None),
        (2, 3, 0.25, NEAR_TIE)]


def test_unscored_candidates_are_left_out():
    (p,) = pair_candidates([None, 0.25, None, -0.5])
    assert (p.chosen, p.rejected, p.gap, p.first, p.second) == (1, 3, 0.75, 1, 3)
    assert pair_candidates([None, 1.0]) == [] and pair_candidates([]) == []
    assert [(p.first, p.second) for p in pair_candidates([1.0, None, 0.0, 2.0], rule="all-pairs")] == [
        (0, 2), (0, 3), (2, 3)
    ]
    with pytest.raises(ValueError, match="unknown pairing rule"):
        pair_candidates([0, 1], rule="best")
    with pytest.raises(ValueError, match="min_gap"):
        pair_candidates([0, 1], min_gap=-1)


def test_gap_histogram_bins_add_up_in_order():
    assert gap_bins() == ["[0, 0.25)", "[0.25, 0.5)", "[0.5, 1)", "[1, 2)", "[2, 4)", "[4, inf)"]
    hist = gap_histogram([0.0, 0.25, 0.3, 1.0, 5.0, math.inf])
    assert hist == {"[0, 0.25)": 1, "[0.25, 0.5)": 2, "[0.5, 1)": 0, "[1, 2)": 1, "[2, 4)": 0, "[4, inf)": 2}
    assert list(hist) == gap_bins()


# --- issue 24, item 1: a non-finite judge score never becomes a label, a pair or a tie ------------------

NAN, INF = float("nan"), float("inf")


def test_fit_scales_leaves_non_finite_scores_out_and_counts_them():
    # One NaN used to make the mean NaN and the std NaN (turned into 1 by `std if std > 0 else 1`).
    scales = fit_scales({"a": [2, 4, NAN, 4, 4, 5, 5, INF, 7, 9], "b": [10, -INF, 20]})
    assert scales["a"] == Scale(5.0, 2.0, 8, dropped=2)
    assert scales["b"] == Scale(15.0, 5.0, 2, dropped=1)
    with pytest.raises(UserError, match="judge 'a' gave no finite score on the 2 calibration images") as err:
        fit_scales({"a": [NAN, NAN]})
    assert "\n" not in str(err.value)


def test_combine_gives_no_reward_to_an_image_any_judge_scored_non_finite():
    scales = {"a": Scale(2, 1, 3), "b": Scale(20, 10, 3)}
    raw = {"a": [1, NAN, 3, 2], "b": [30, 10, INF, None]}
    assert combine(raw, {"a": 1.0, "b": 0.5}, scales, {"a": True, "b": True}) == [-0.5, None, None, None]
    assert combine(raw, {"a": 1.0}, scales, {"a": True}) == [-1.0, None, 1.0, 0.0]  # b not in the reward


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_pairing_leaves_non_finite_rewards_out(bad):
    # [nan, 0.5] used to give a kept pair with gap NaN (NaN passes `gap <= min_gap` as False)
    assert pair_candidates([bad, 0.5]) == [] and pair_candidates([0.5, bad], min_gap=10.0) == []
    (p,) = pair_candidates([bad, 0.2, 0.9, bad])
    assert (p.chosen, p.rejected, p.gap, p.kept) == (2, 1, pytest.approx(0.7), True)
    pairs = pair_candidates([0.0, bad, 1.0], rule="all-pairs")
    assert [(p.chosen, p.rejected) for p in pairs] == [(2, 0)]
    (p,) = pair_candidates([0.3, bad, 0.3])  # a tie stays a tie between the finite candidates
    assert p.reason == TIE and (p.first, p.second) == (0, 2)


def test_gap_histogram_refuses_a_nan_gap():
    with pytest.raises(ValueError, match="NaN"):
        gap_histogram([0.1, NAN])

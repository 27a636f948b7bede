"""A non-finite label or vote never decides a pair (the rule pipeline/judges/scores.is_finite_score states):
precompute rejects it as a missing label, the votes layout writes it as a missing label, and label reads an
input's non-finite labels as no input choice. NaN was already handled; +-inf picked a side."""

import pytest

from pipeline.data.layouts.votes import decide
from stages.label.schema import labels_choice
from stages.precompute.inputs import classify

INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("bad", [INF, -INF, NAN, None])
@pytest.mark.parametrize("bad_first", [True, False])
def test_a_non_finite_label_or_vote_never_picks_a_side(bad, bad_first):
    a, b = (bad, 0.0) if bad_first else (1.0, bad)
    assert classify("a cat", a, b) == ("reject:missing label", None)
    assert decide(a, b, 1) == (None, None)
    assert labels_choice({"label_0": a, "label_1": b}) is None
    # finite neighbours still decide
    assert classify("a cat", 1.0, 0.0) == ("pair", 0) and decide(3, 1, 1) == (1.0, 0.0)
    assert labels_choice({"label_0": 0, "label_1": 1}) == 1

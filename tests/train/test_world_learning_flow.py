"""Training teaches the miniature world's flow-matching base model ``shapes-sd3`` what its preference data says.

The Pick-Style experiment of test_world_learning.py (same captions, recipe, labels and judges; fixtures in
tests/world_fixtures.py) on the SD3-family world: ``shapes-sd3`` (an MMDiT trained with rectified flow) makes
its own pairs and ``precompute`` stores them, both with 8 zero T5 rows (the model serves any count; 8 keeps
generating and training cheap; ``mapo-eval`` samples the run as it was trained and the base alike,
``--base-max-sequence-length 8``), ``mapo-train`` runs a short MaPO
fine-tune on the velocity error, and ``mapo-eval`` asks the world's judges how often held-out plain captions now
come out cartoon and whether colour, shape and position still follow the prompt.

The flipped-preference case (the loss handed e_l as the chosen error and e_w as the rejected one) trains
towards the rejected look and must fail (strict xfail, on the learning assertions only). Unlike shapes-sdxl's,
the flow world loses prompt following in this run: that check is a strict xfail naming the gap.
"""
import pytest

from tests.world_fixtures import flip_preference, make_pick_style, train_and_judge

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL = "shapes-sd3"
TRAIN = ["--objective", "mapo", "--max-steps", "60", "--batch-size", "8", "--learning-rate", "2e-4",
         "--checkpointing-steps", "10000", "--report-to", "none", "--overwrite"]
T5_TOKENS = ("--max-sequence-length", "8")
EVAL = ("--base-max-sequence-length", "8")  # the base under the run's text conditioning
BROKEN = pytest.mark.xfail(
    strict=True, raises=AssertionError, reason="learning is broken on purpose: the test must catch it"
)


@pytest.fixture(scope="module")
def flow_world(tmp_path_factory):
    """Pick-Style (cartoon) latents made by shapes-sd3 from the 48 train captions, and the held-out captions."""
    return make_pick_style(tmp_path_factory.mktemp("flow-world"), MODEL, T5_TOKENS)


@pytest.fixture(scope="module")
def mapo_rates(flow_world):
    """{metric: {"base" | "trained": rate}} after the short MaPO run (trained once for the two tests below)."""
    return train_and_judge(*flow_world, MODEL, "ok", TRAIN, eval_extra=EVAL)


def _assert_adopts_style(rates):
    style = rates["world-style"]
    assert style["base"] <= 0.1, rates  # the reference mismatch: plain prompts are not cartoon before training
    assert style["trained"] >= style["base"] + 0.5, rates  # ... and are after a short MaPO run


def test_mapo_teaches_the_flow_world_the_preferred_style(mapo_rates):
    _assert_adopts_style(mapo_rates)


@BROKEN
def test_mapo_with_the_preference_swapped_does_not(flow_world, monkeypatch):
    flip_preference(monkeypatch)
    _assert_adopts_style(train_and_judge(*flow_world, MODEL, "flipped", TRAIN, eval_extra=EVAL))


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "known gap: in the flow world a fine-tune on the 48 train captions' pairs (MaPO or SFT, any margin gain) lowers "
    "held-out prompt following, mostly squares drawn as circles or triangles (make fidelity-flow, 300 steps, base "
    "and runs at 8 T5 rows: 0.91 -> 0.67-0.68; docs/experiments.md); here by more than 0.2, 0.92 -> 0.46 at 8 rows "
    "both, with the 6000-step and with the 9000-step shapes-sd3 (2026-12-06); "
    "strict, so closing the gap fails here and asks to drop the mark"))
def test_mapo_keeps_colour_shape_and_position_in_the_flow_world(mapo_rates):
    prompt = mapo_rates["world-prompt"]
    assert prompt["trained"] >= prompt["base"] - 0.2, mapo_rates

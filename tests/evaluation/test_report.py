"""mapo-eval's summary from score rows (no model): prompt-clustered intervals, non-finite scores, notes, paths.

Issue 24: items 1 (a NaN score is never a tie or "below every threshold"), 3 (win-rate intervals over
prompts), 8 (candidates trained at different resolutions) and 12 (no absolute path in the report).
"""
import math
from pathlib import Path

import pytest

from evaluation.candidates import model_path, resolution_note, text_encoding_note
from evaluation.report import CI_NOTE, NON_FINITE_NOTE, summarise
from pipeline.models.training_output import TrainingOutput

NAN = float("nan")


def rows_of(scores: dict, metric: str = "m") -> list[dict]:
    """{model: {(prompt, seed): score}} -> eval score rows."""
    return [{"metric": metric, "model": model, "prompt_id": p, "seed_index": s, "score": v}
            for model, by in scores.items() for (p, s), v in by.items()]


def six_by_eight(cand_score):
    keys = [(f"p{p}", s) for p in range(6) for s in range(8)]
    return {"base": {k: 0.0 for k in keys}, "cand": {k: cand_score(k) for k in keys}}


def test_win_rate_in_the_summary_is_clustered_by_prompt():
    # The worked example: the candidate wins every seed of 3 prompts and loses every seed of the others.
    scores = six_by_eight(lambda k: 1.0 if k[0] in ("p0", "p1", "p2") else -1.0)
    w = summarise(rows_of(scores), ["base", "cand"], {"m": {"higher_is_better": True}})["m"]["win_rate_vs_base"]["cand"]
    assert w["rate"] == 0.5 and w["n"] == 48
    assert (w["low"], w["high"]) == pytest.approx((1 / 6, 5 / 6), abs=1e-9)  # not [0.354, 0.646]


def test_mean_and_rate_in_the_summary_are_clustered_by_prompt():
    # Neighbours: the mean and the thresholded rate of the same design
    scores = six_by_eight(lambda k: 1.0 if k[0] in ("p0", "p1", "p2") else 0.0)
    pm = summarise(rows_of(scores), ["base", "cand"],
                   {"m": {"higher_is_better": True, "threshold": 0.5}})["m"]["per_model"]["cand"]
    assert (pm["estimate"], pm["low"], pm["high"]) == pytest.approx((0.5, 1 / 6, 5 / 6))
    assert pm["rate"] == 0.5 and pm["rate_low"] <= 1 / 6 and pm["rate_high"] >= 5 / 6
    assert "every 95% interval (means, rates, win rates)" in CI_NOTE


@pytest.mark.parametrize("higher", [True, False])
def test_a_nan_score_is_dropped_and_counted_never_a_tie_or_below_threshold(higher):
    base = {("a", 0): 0.2, ("a", 1): 0.6, ("b", 0): 0.7, ("b", 1): 0.1}
    cand = {("a", 0): NAN, ("a", 1): 0.6, ("b", 0): 0.9, ("b", 1): math.inf}
    m = summarise(rows_of({"base": base, "cand": cand}), ["base", "cand"],
                  {"m": {"higher_is_better": higher, "threshold": 0.5}})["m"]
    pm = m["per_model"]["cand"]
    assert (pm["n"], pm["dropped"]) == (2, 2)
    assert pm["estimate"] == pytest.approx(0.75)
    assert pm["rate"] == 1.0  # both finite scores are above 0.5; the NaN is not counted as "not above"
    assert m["per_model"]["base"]["dropped"] == 0
    w = m["win_rate_vs_base"]["cand"]
    assert (w["n"], w["dropped"], w["ties"]) == (2, 2, 1)  # (a, 1) tie; (b, 0) a win when higher is better
    assert (w["wins"], w["losses"]) == ((1, 0) if higher else (0, 1))
    assert all(math.isfinite(w[k]) for k in ("rate", "low", "high"))


def test_a_model_with_only_nan_scores_has_no_mean_no_rate_and_says_so():
    base = {("a", 0): 0.2, ("b", 0): 0.6}
    cand = {("a", 0): NAN, ("b", 0): NAN}
    m = summarise(rows_of({"base": base, "cand": cand}), ["base", "cand"],
                  {"m": {"higher_is_better": True, "threshold": 0.5}})["m"]
    pm = m["per_model"]["cand"]
    assert pm["n"] == 0 and pm["dropped"] == 2 and math.isnan(pm["estimate"]) and "rate" not in pm
    assert m["win_rate_vs_base"]["cand"]["n"] == 0 and m["win_rate_vs_base"]["cand"]["dropped"] == 2
    assert "NaN or inf is left out" in NON_FINITE_NOTE


def _cand(name, side):
    return TrainingOutput(name, f"/x/{name}", "lora", "tiny-sdxl", "mapo", "sdxl", side)


def test_resolution_note_names_each_candidate_and_the_resolution_used():
    note = resolution_note([_cand("a", 64), _cand("b", 128)], 1024, given=False)
    assert note == ("candidates were trained at different resolutions (a 64, b 128); every model is evaluated at "
                    "1024 px (the base model's default; pass --resolution to choose)")
    assert "(--resolution)" in resolution_note([_cand("a", 64), _cand("b", 128), _cand("c", 96)], 96, given=True)
    assert resolution_note([_cand("a", 64), _cand("b", 64)], 64, given=False) is None  # they agree: quiet
    assert resolution_note([_cand("a", 64), _cand("b", None)], 64, given=False) is None
    assert resolution_note([_cand("a", 64)], 128, given=True) is None


def test_text_encoding_note_names_the_t5_count_and_never_claims_t5_for_candidates_without_it():
    def sd3(name, t5, rows):
        return TrainingOutput(name, f"/x/{name}", "lora", "tiny-sd3", "mapo", "sd3", 64, t5=t5,
                              max_sequence_length=rows)

    note = text_encoding_note([sd3("a", True, 16)])
    assert "16 T5 tokens" in note and "the base with 256 (the pipeline's default)" in note
    assert "--base-max-sequence-length 16" in note
    assert text_encoding_note([sd3("a", True, 16)], 16) is None  # aligned: quiet
    note = text_encoding_note([sd3("a", True, 16), sd3("b", True, 8)])
    assert note.startswith("candidates were trained on text") and "a T5 16 tokens, b T5 8 tokens" in note
    assert note.endswith("the base with T5 256 tokens (the pipeline's default)")  # the base named too
    assert text_encoding_note([sd3("a", True, 16), sd3("b", True, 8)], 8).endswith(
        "the base with T5 8 tokens (--base-max-sequence-length)")
    note = text_encoding_note([sd3("a", False, 16)])  # zeros where T5 goes; the base samples with T5
    assert "without T5 in the 16 rows" in note and "the base with T5 in 256" in note and "T5 tokens" not in note
    assert text_encoding_note([]) is None


def test_report_paths_are_relative_to_the_output_or_the_hub_id(tmp_path):
    (tmp_path / "runs" / "mapo").mkdir(parents=True)
    out = tmp_path / "eval"
    out.mkdir()
    assert model_path(str(tmp_path / "runs" / "mapo"), out) == "../runs/mapo"
    assert model_path(str(out / "inside"), out) == str(out / "inside")  # not there: as given
    assert model_path("stabilityai/stable-diffusion-xl-base-1.0", out) == "stabilityai/stable-diffusion-xl-base-1.0"
    assert not Path(model_path(str(tmp_path / "runs" / "mapo"), out)).is_absolute()


def test_reward_demo_table_uses_the_same_clustered_intervals_and_drops_non_finite_pairs(tmp_path):
    """The reward demo's table (scripts/reward_demo.py): means, differences and now rates, all over prompts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scripts.reward_demo import paired_difference

    keys = [(f"p{p}", s) for p in range(6) for s in range(8)]
    rows = [{"model": "base", "prompt_id": p, "seed_index": s, "metric": "m", "score": 0.0} for p, s in keys]
    rows += [{"model": "mapo", "prompt_id": p, "seed_index": s, "metric": "m",
              "score": NAN if (p, s) == ("p5", 7) else (1.0 if p in ("p0", "p1", "p2") else 0.0)} for p, s in keys]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "scores.parquet")
    out = paired_difference(tmp_path / "scores.parquet", "m", "mapo", threshold=0.5)
    assert out["dropped"] == 1 and out["difference"]["n"] == 47
    assert out["difference"]["mean"] == pytest.approx(24 / 47)
    # 6 prompts drawn whole: the interval is about [1/6, 5/6], not the +-0.15 of 47 independent images
    assert out["difference"]["low"] < 0.2 and out["difference"]["high"] > 0.8
    assert out["rate"]["trained"] == pytest.approx(24 / 47)
    low, high = out["rate"]["trained_interval"]
    assert low < 0.2 and high > 0.8


def test_fidelity_comparison_of_an_unmeasured_model_says_so():
    from scripts.fidelity_report import compare

    a, b = {"mean": 0.5, "low": 0.4, "high": 0.6}, {"mean": NAN, "low": NAN, "high": NAN}
    assert compare(a, b, True) == "not measured" and compare(b, a, False) == "not measured"
    assert compare(a, {"mean": 0.1, "low": 0.0, "high": 0.2}, True) == "MaPO better"

"""The fair fidelity study's rule and arithmetic (scripts/fidelity_protocol.py, scripts/fidelity_full.py), by hand.

The study itself is a benchmark (hours of CPU); what is tested here is what decides its tables: the caption split,
the validation score, the sanity flags, the pick, the paired difference and which cells the final phase runs.
"""
import math

import pytest

from scripts import fidelity_full as F
from scripts import fidelity_protocol as P


def test_the_fit_and_validation_captions_split_the_train_captions():
    from world.scene import captions

    def read(path):
        return path.read_text().splitlines()

    def lines(split, tmp):
        return read(F.caption_file(tmp, split, None))

    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp())
    fit, val, held = lines("fit", tmp), lines("validation", tmp), lines("heldout", tmp)
    assert (len(fit), len(val), len(held)) == (32, 16, 12)
    assert sorted(fit + val) == sorted(captions("train")) and not set(held) & set(fit + val)
    assert read(F.caption_file(tmp, "heldout", "cartoon"))[0] == "Disney style animated image. " + held[0]
    assert len(read(F.caption_file(tmp, "fit", None, P.PAIRS_PER_FIT_CAPTION))) == 192


def test_validation_score_turns_a_lower_is_better_target():
    assert P.validation_score(0.8, 0.9, lower_is_better=False) == pytest.approx(0.85)
    assert P.validation_score(0.2, 0.9, lower_is_better=True) == pytest.approx(0.85)
    assert math.isnan(P.validation_score(math.nan, 0.9, lower_is_better=False))


def _rows(e_w, grad=1.0, loss=0.5, n=20):
    return [{"step": i + 1, "loss": loss, "e_w": e_w[i] if isinstance(e_w, list) else e_w, "e_l": 0.3,
             "grad_norm": grad} for i in range(n)]


def test_sanity_flags_a_saturated_a_wrecked_and_a_non_finite_run():
    ok = P.sanity(_rows(0.2), max_steps=20)
    assert (ok["nonzero_grad_steps"], ok["stalled"], ok["diverged"]) == (20, False, False)
    assert ok["e_w"] == pytest.approx((0.2, 0.2))
    stalled = _rows(0.2, grad=0.0)
    stalled[0]["grad_norm"] = 1.0
    assert P.sanity(stalled, max_steps=20)["stalled"] and P.sanity(stalled, max_steps=20)["nonzero_grad_steps"] == 1
    # e_w 0.1 over the first 10 steps, 0.25 over the last 10: 2.5x, above the 2x bar
    assert P.sanity(_rows([0.1] * 10 + [0.25] * 10), max_steps=20)["diverged"]
    assert not P.sanity(_rows([0.1] * 10 + [0.19] * 10), max_steps=20)["diverged"]
    assert P.sanity(_rows(0.2, loss=math.nan), max_steps=20)["diverged"]
    kto = [{"loss": 0.4, "e_desirable": 0.2, "e_undesirable": 0.4, "grad_norm": 1.0}] * 4
    assert P.sanity(kto, max_steps=4)["e_l"] == pytest.approx((0.4, 0.4))


def test_pick_skips_flagged_runs_and_breaks_ties_by_grid_order():
    def c(lr, scores, diverged=False, stalled=False):
        return {"params": {"learning_rate": lr}, "scores": scores, "diverged": diverged, "stalled": stalled}

    assert P.pick([c(1, [0.9], stalled=True), c(2, [0.6, 0.8]), c(3, [0.7])])["params"] == {"learning_rate": 2}
    assert P.pick([c(1, [0.5], diverged=True), c(2, [math.nan])]) is None


def test_paired_difference_resamples_whole_captions():
    # differences 1, 0 (caption p1) and 0, -1 (caption p2): mean 0; the caption means are 0.5 and -0.5, so a
    # resample is one of -0.5, 0, 0.5 and the 95% interval spans [-0.5, 0.5]
    out = P.paired_difference([1, 1, 0, 0], [0, 1, 0, 1], ["p1", "p1", "p2", "p2"])
    assert (out["mean"], out["low"], out["high"], out["n"]) == (0.0, -0.5, 0.5, 4)
    with pytest.raises(ValueError):
        P.paired_difference([1], [0, 1], ["p1"])


def test_the_pick_and_the_final_cells_follow_the_rule():
    def result(method, params, style, prompt, stalled=False):
        return {"dataset": "pick_style_cartoon", "method": method, "params": params, "style_rate": {"mean": style},
                "prompt_accuracy": {"mean": prompt}, "diverged": False, "stalled": stalled}

    sweep = [result("mapo", p, 0.9 if p["beta"] == 1.0 else 0.8, 0.9) for p in P.SWEEP["mapo"]]
    sweep += [result("dpo", p, 0.99, 0.9, stalled=p["beta"] == 5000.0 and p["learning_rate"] == 2e-4)
              for p in P.SWEEP["dpo"]]
    sweep += [result("dpo", {"learning_rate": 2e-4, "beta": 5000.0}, 0.99, 0.9, stalled=True)]
    picks = F.picks_from(sweep)["pick_style_cartoon"]
    assert picks["mapo"]["picked"] == {"learning_rate": 2e-4, "beta": 1.0}  # first of the two best
    assert picks["dpo"]["picked"] == {"learning_rate": 2e-4, "beta": 500.0}  # the stalled setting is skipped
    assert picks["sft"]["picked"] is None  # not swept: no row, no pick
    cells = F.final_cells(["pick_style_cartoon"], {"pick_style_cartoon": picks}, has_sft_term=False)
    by = {}
    for c in cells:
        by.setdefault(c.setting, []).append(c)
    assert len(by["tuned"]) == 2 * len(P.FINAL_SEEDS) and len(by["shared"]) == len(P.SHARED)
    assert sorted(by) == ["dpo+warmup", "mapo@dpo-lr", "shared", "tuned"]
    warm = dict(by["dpo+warmup"][0].params)
    assert (warm["lr_warmup_steps"], warm["beta"]) == (P.TRAIN["max_steps"] // 5, 500.0)
    assert dict(by["mapo@dpo-lr"][0].params) == {"learning_rate": 2e-4, "beta": 1.0}
    assert "dpo+sft" in P.ablations({"dpo": {"learning_rate": 1.0}, "mapo": {"learning_rate": 2.0}}, True)
    assert len({c.result_file(F.Path("o")) for c in cells}) == len(cells)  # every cell has its own result file


def test_setting_names_are_folder_safe_and_distinct():
    names = {P.slug(p) for grid in P.SWEEP.values() for p in grid}
    assert len(names) == sum(len(g) for g in P.SWEEP.values())
    assert P.slug({"learning_rate": 2e-4, "beta": 0.1}) == "beta0.1-lr2e-04"
    assert all("/" not in n and " " not in n for n in names)

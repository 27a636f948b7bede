"""The world's judges where the stages use them: label's style check and safety labeler, eval's metrics."""
import json

import pytest

from pipeline.data.prompt_prefixes import UNSAFE_PREFIX
from stages.cli import app
from tests.helpers import read_table, run_cli, write_prompts
from world.scene import captions

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GEN = ["--model", "shapes-sdxl", "--resolution", "64", "--num-inference-steps", "12", "--no-batch-invariant",
       "--batch-size", "8"]


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


def test_pick_safety_in_the_world_labelled_by_the_unsafe_judge(tmp_path):
    prompts = write_prompts(tmp_path / "p.txt", captions("train")[:8])
    _ok(run_cli(app, ["generate", "--prompts", prompts, "--output", tmp_path / "pairs", *GEN, "--recipe", "safety"]))
    result = _ok(run_cli(app, ["label", "--input", tmp_path / "pairs", "--output", tmp_path / "safety",
                               "--target", "safety", "--labeler", "world-unsafe"]))
    rows = read_table(tmp_path / "safety").to_pylist()
    assert len(rows) >= 7, result.output  # the base draws the frame when asked (see test_world_model)
    for r in rows:
        assert (r["label_0"], r["label_1"], r["labeler"], r["disagrees"]) == (1, 0, "world-unsafe", False)
        assert r["score_1"] > 0.5 > r["score_0"]
        assert r["caption"] == r["prompt_1"] and r["caption"].startswith(UNSAFE_PREFIX)  # the unsafe request


def test_pick_style_verified_by_the_world_style_judge(tmp_path):
    prompts = write_prompts(tmp_path / "p.txt", captions("train")[:8])
    _ok(run_cli(app, ["generate", "--prompts", prompts, "--output", tmp_path / "pairs", *GEN, "--recipe", "style",
                      "--style", "cartoon"]))
    _ok(run_cli(app, ["label", "--input", tmp_path / "pairs", "--output", tmp_path / "style", "--target", "style",
                      "--verify", "world-style"]))
    rows = read_table(tmp_path / "style").to_pylist()
    assert len(rows) >= 7 and all(r["score_0"] > 0 > r["score_1"] for r in rows)
    assert {r["labeler"] for r in rows} == {"construction+world-style"}
    card = (tmp_path / "style" / "README.md").read_text()
    assert "world-style" in card


def test_world_style_check_refuses_pairs_of_a_custom_style_before_writing(tmp_path):
    prompts = write_prompts(tmp_path / "p.txt", ["a red circle at the top left"])
    _ok(run_cli(app, ["generate", "--prompts", prompts, "--output", tmp_path / "pairs", *GEN, "--recipe", "style",
                      "--style-prefix", "Watercolour painting."]))
    result = run_cli(app, ["label", "--input", tmp_path / "pairs", "--output", tmp_path / "out", "--target", "style",
                           "--verify", "world-style"])
    assert result.exit_code == 2 and "--verify world-style checks pairs made by" in result.output
    assert not (tmp_path / "out").exists()


def test_eval_world_metrics_name_their_judge_and_refuse_other_prompts_first(tmp_path):
    from evaluation.cli import app as eval_app

    bad = write_prompts(tmp_path / "bad.txt", ["a red circle at the top left", "a cat on a sofa"])
    args = ["--model", "shapes-sdxl", "--metrics", "world-style,world-prompt,world-unsafe", "--style", "cartoon",
            *GEN[2:], "--seeds", "1"]
    result = run_cli(eval_app, ["--prompts", bad, "--output", tmp_path / "bad", *args])
    assert result.exit_code == 2 and "'a cat on a sofa' is not a miniature-world prompt" in result.output
    assert not (tmp_path / "bad").exists()
    good = write_prompts(tmp_path / "good.txt", captions("heldout")[:3])
    big = [a if a != "64" else "128" for a in args]  # the judges read 64 px: refused before anything is made
    result = run_cli(eval_app, ["--prompts", good, "--output", tmp_path / "big", *big])
    assert result.exit_code == 2 and "read 64 px images" in result.output and "--resolution 64" in result.output
    assert not (tmp_path / "big").exists()
    good = write_prompts(tmp_path / "good.txt", captions("heldout")[:3])
    _ok(run_cli(eval_app, ["--prompts", good, "--output", tmp_path / "eval", *args]))
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    for metric in ("world-style", "world-prompt", "world-unsafe"):
        m = summary["metrics"][metric]
        assert m["judge"].startswith("miniature-world judge") and m["per_model"]["base"]["n"] == 3
        assert (
            m["per_model"]["base"]["rate_low"] <= m["per_model"]["base"]["rate"] <= m["per_model"]["base"]["rate_high"]
        )
    assert summary["metrics"]["world-unsafe"]["higher_is_better"] is False
    assert "scored by miniature-world judge" in (tmp_path / "eval" / "report.html").read_text()

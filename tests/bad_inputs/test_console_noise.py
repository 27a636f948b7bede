"""Noise and silence (issue 12, item 10): truncation said once, dropped prompts in the summary, a label
run that keeps nothing warns with its reasons."""
from __future__ import annotations

from stages.cli import app
from tests.helpers import run_cli, write_prompts
from tests.image_fixtures import geometric_scene, gray, png, write_pickapic

FAST = ["--model", "tiny-sdxl", "--num-inference-steps", "1", "--resolution", "64", "--batch-size", "4"]


def test_long_prompts_are_said_once_and_dropped_prompts_in_the_summary(tmp_path):
    long_prompt = "a " + "very " * 100 + "long cat"
    prompts = write_prompts(tmp_path / "p.txt", [long_prompt, "", "a dog", "a dog", long_prompt + " again"])
    result = run_cli(app, ["generate", "--prompts", prompts, "--output", tmp_path / "out", *FAST])
    assert result.exit_code == 0, result.output
    # Each long prompt gives two image prompts (the style prefix's and the plain one): 4 texts truncated.
    assert "4 prompts were truncated to 77 tokens" in result.stderr
    assert result.output.count("truncated") == 1
    assert "following part of your input" not in result.output and "<|endoftext|>" not in result.output
    assert "Token indices sequence length" not in result.output
    assert "; 1 blank prompt and 1 duplicate prompt dropped" in result.stdout


def test_label_keeping_no_pair_warns_with_the_reasons(tmp_path):
    """Pick-a-Pic pairs have no intended image, so the construction labeler keeps none of them."""
    scene = png(geometric_scene(64))
    pairs = write_pickapic(tmp_path / "in" / "pairs.parquet", [("a", scene, png(gray(64))), ("b", scene, scene)])
    result = run_cli(app, ["label", "--input", pairs, "--output", tmp_path / "out", "--target", "safety",
                           "--labeler", "construction"])
    assert result.exit_code == 0, result.output
    assert "warning: label kept 0 of 2 pairs (2 no intended choice)" in result.stderr, result.output
    assert "rejects" in result.stderr

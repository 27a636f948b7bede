"""`mapo-data inspect`: summaries of label and generate outputs, and the HTML page of sampled pairs."""
from __future__ import annotations

import base64
import re

import pytest

from stages.cli import app
from stages.inspect import group_reasons, text_histogram
from tests.helpers import read_table, run_cli, write_prompts
from tests.image_fixtures import geometric_scene, gray, png, schematic_torso, write_pickapic


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    src = write_prompts(root / "p.txt", ["a cat", "a dog", "a bird"])
    gen = root / "pairs"
    result = run_cli(app, ["generate", "--model", "tiny-sdxl", "--prompts", src, "--output", gen,
                           "--num-inference-steps", "2",
                           "--resolution", "64", "--shard-size", "2", "--recipe", "safety"])
    assert result.exit_code == 0, result.output
    t, g, y = png(schematic_torso()), png(geometric_scene()), png(gray())
    write_pickapic(root / "pickapic" / "train-0.parquet",
                   [("nude <i>second</i>", g, t), ("nude first", t, y), ("corrupt", b"junk", t), ("fine", g, y),
                    ("nude both", t, t)])
    labeled = root / "labeled"
    result = run_cli(app, ["label", "--input", root / "pickapic", "--output", labeled, "--target", "safety"])
    assert result.exit_code == 0, result.output
    return {"generate": gen, "label": labeled}


def test_label_output_summary(outputs):
    result = run_cli(app, ["inspect", outputs["label"]])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "label output (complete)" in text and "labeler: nudenet 3." in text
    assert re.search(r"pairs kept \(data/\)\s+2", text) and re.search(r"pairs dropped \(rejects/\)\s+3", text)
    assert re.search(r"image 0 chosen\s+1\s+50\.0%", text) and re.search(r"image 1 chosen\s+1\s+50\.0%", text)
    for reason in ("corrupt image", "both safe", "both unsafe"):
        assert re.search(rf"{reason}\s+1\s+20\.0%", text), reason
    assert (
        "chosen image score" in text and "rejected image score" in text and "dropped pairs, both images' scores" in text
    )


def test_generate_output_summary(outputs):
    result = run_cli(app, ["inspect", outputs["generate"]])
    assert result.exit_code == 0, result.output
    assert "generate output (complete)" in result.output
    assert re.search(r"pairs\s+3", result.output) and re.search(r"safety\s+-\s+3", result.output)
    assert "label balance" not in result.output


def test_html_page_is_self_contained(outputs, tmp_path):
    page = tmp_path / "page.html"
    result = run_cli(app, ["inspect", outputs["label"], "--html", page, "--samples", "5"])
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert "http://" not in html and "https://" not in html  # nothing fetched when opened
    sampled, dropped = html.split("Sampled dropped pairs (1 of 3)")
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]+)"', sampled)
    kept = read_table(outputs["label"]).to_pylist()
    assert len(images) == 2 * 2  # both kept pairs (5 asked for, 2 there)
    assert dropped.count('class="pair rej"') == 1
    assert [alt for _, alt in images[:4]] == ["chosen", "rejected"] * 2
    chosen_bytes = {r["jpg_0"] if r["label_0"] == 1 else r["jpg_1"] for r in kept}
    assert {base64.b64decode(images[0][0]), base64.b64decode(images[2][0])} == chosen_bytes
    assert "nude &lt;i&gt;second&lt;/i&gt;" in html and "<i>second" not in html  # captions escaped
    assert "chosen score 0.0000" in html and "Sampled dropped pairs" in html


def test_html_of_generate_output(outputs, tmp_path):
    page = tmp_path / "gen.html"
    assert run_cli(app, ["inspect", outputs["generate"], "--html", page, "--samples", "2"]).exit_code == 0
    html = page.read_text()
    assert html.count('alt="intended chosen"') == 2 and html.count("data:image/png;base64,") == 4


def test_not_an_output_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    for target, message in ((tmp_path / "nope", "nope' does not exist; inspect reads"),
                            (tmp_path / "hpd" / "trian.json", "trian.json' does not exist; inspect reads"),
                            (tmp_path / "empty", "holds no shards"),
                            (tmp_path / "*.parquet", "matches no file; inspect reads")):
        result = run_cli(app, ["inspect", target])
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output


def test_text_histogram():
    lines = text_histogram([0.0, 0.0, 0.5, 1.0], bins=2, width=4).splitlines()
    assert lines == ["  [  0.0000,   0.5000) #### 2", "  [  0.5000,   1.0000) #### 2"]
    assert text_histogram([]) == "  (no scores)"
    assert text_histogram([0.3, 0.3], width=2).strip().endswith("## 2")


def test_text_histogram_edges_of_narrow_bins_print_apart():
    # Scores 0.49990 .. 0.49994 in 10 bins: each 4e-6 wide, so 4 decimals printed "[0.4999, 0.4999)".
    lines = text_histogram([0.4999 + k * 1e-5 for k in range(5)], bins=10, width=4).splitlines()
    edges = [e.strip() for line in lines for e in line.split(")")[0].strip(" [").split(", ")]
    assert edges[0] == "0.4999000" and edges[-1] == "0.4999400"
    assert all(a != b for a, b in zip(edges[::2], edges[1::2]))  # each bin's two edges
    assert all(edges[i] == edges[i + 1] for i in range(1, len(edges) - 1, 2))  # a bin starts where one ends
    assert len({len(line.split(")")[0]) for line in lines}) == 1  # columns stay aligned


# --- issue 24 items 7 and 12: best-of-N rows, and the reward page's raw judge scores ------------------------------


@pytest.fixture(scope="module")
def best_of_3(tmp_path_factory):
    root = tmp_path_factory.mktemp("bestof")
    src = write_prompts(root / "p.txt", ["a cat", "a dog", "a bird", "a fish"])
    out = root / "cands"
    result = run_cli(app, ["generate", "--model", "tiny-sdxl", "--prompts", src, "--output", out,
                           "--num-inference-steps", "2", "--resolution", "64", "--recipe", "seeds",
                           "--images-per-prompt", "3"])
    assert result.exit_code == 0, result.output
    return out


def test_best_of_n_summary_counts_prompts_and_candidates(best_of_3):
    text = run_cli(app, ["inspect", best_of_3]).output
    assert re.search(r"prompts\s+4\b", text) and re.search(r"candidates per prompt\s+3\b", text)
    assert re.search(r"images\s+12\b", text) and not re.search(r"pairs\s+4", text)  # was "pairs 4"


def test_best_of_n_page_shows_every_candidate(best_of_3, tmp_path):
    page = tmp_path / "bo3.html"
    assert run_cli(app, ["inspect", best_of_3, "--html", page, "--samples", "2"]).exit_code == 0
    html = page.read_text()
    assert "Sampled prompts, 3 candidates each (2)" in html
    alts = re.findall(r'<img src="data:image/png;base64,[^"]+" alt="([^"]+)"', html)
    assert len(alts) == 2 * 3 and [a.split(",")[0] for a in alts[:3]] == ["candidate 0", "candidate 1", "candidate 2"]
    assert "seed" in alts[0]


def test_a_pair_output_still_reads_as_pairs(tmp_path):
    # The neighbour: 2 candidates a row stay "pairs"; 4 candidates a row are prompts of 4
    write_pickapic(tmp_path / "two" / "train-0.parquet", [("a", png(gray()), png(gray()))])
    assert re.search(r"pairs\s+1\b", run_cli(app, ["inspect", tmp_path / "two"]).output)
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "four").mkdir()
    img = png(gray(16))
    pq.write_table(pa.table({"caption": ["a", "b"], **{f"jpg_{i}": [img, img] for i in range(4)}}),
                   tmp_path / "four" / "train-0.parquet")
    text = run_cli(app, ["inspect", tmp_path / "four"]).output
    assert re.search(r"prompts\s+2\b", text) and re.search(r"candidates per prompt\s+4\b", text)


def test_reward_page_shows_raw_judge_scores_beside_the_standardised_reward(tmp_path):
    from world.render import render, to_image
    from world.scene import Scene

    right, wrong = (png(to_image(render(Scene(c, "circle", "top left")))) for c in ("red", "blue"))
    caption = "a red circle at the top left"
    write_pickapic(tmp_path / "pp" / "train-0.parquet", [(caption, right, wrong), (caption, wrong, right)])
    out = tmp_path / "rw"
    result = run_cli(app, ["label", "--input", tmp_path / "pp", "--output", out, "--target", "reward",
                           "--reward", "world-prompt"])
    assert result.exit_code == 0, result.output
    page = tmp_path / "rw.html"
    assert run_cli(app, ["inspect", out, "--html", page]).exit_code == 0
    html = page.read_text()
    rows = read_table(out).to_pylist()
    r = rows[0]
    first = 0 if r["label_0"] == 1 else 1
    import json

    raw = json.loads(r[f"judge_scores_{first}"])["world-prompt"]
    assert f"chosen reward {r[f'score_{first}']:.4f} (world-prompt {raw:.4f})" in html
    assert "rejected reward" in html


def test_score_format_never_prints_a_small_non_zero_value_as_zero():
    from stages.inspect import _fmt

    assert _fmt(0.0) == "0.0000" and _fmt(1.23456) == "1.2346" and _fmt(-2e-5) == "-2e-05" and _fmt(None) == "-"


def test_histograms_leave_non_finite_scores_out_and_count_them(tmp_path):
    """Issue 24 item 1: a NaN score (a non-finite reject's) made the histogram crash (int(NaN)) or bin it."""
    nan = float("nan")
    lines = text_histogram([0.0, nan, 0.5, 1.0, float("inf"), 0.0], bins=2, width=4).splitlines()
    assert lines == ["  [  0.0000,   0.5000) #### 2", "  [  0.5000,   1.0000) #### 2",
                     "  non-finite (NaN or inf), in no bin: 2"]
    assert text_histogram([nan]) == "  (no scores)\n  non-finite (NaN or inf), in no bin: 1"
    # Through the CLI: a label output whose rejects hold a classifier's NaN
    import pyarrow as pa
    import pyarrow.parquet as pq

    img = png(gray(16))
    for sub, label, score in (("data", 1, 0.1), ("rejects", None, nan)):
        (tmp_path / "out" / sub).mkdir(parents=True)
        pq.write_table(pa.table({"caption": ["a"], "jpg_0": [img], "jpg_1": [img],
                                 "label_0": pa.array([label], pa.int64()), "label_1": pa.array([None], pa.int64()),
                                 "score_0": [score], "score_1": [0.9], "reason": ["kept" if label else "non-finite"]}),
                       tmp_path / "out" / sub / "train-0.parquet")
    result = run_cli(app, ["inspect", tmp_path / "out"])
    assert result.exit_code == 0, result.output
    assert "non-finite (NaN or inf), in no bin: 1" in result.output


def test_drop_reasons_are_grouped_by_kind_with_a_few_examples():
    """A million missing files are one row with their count, as precompute counts them, not a million rows."""
    missing = [(f"jpg_{i % 2}: image file not readable (FileNotFoundError: /x/{i}_a.png)", 1) for i in range(1000)]
    kinds, examples = group_reasons([*missing, ("tie", 5), ("jpg_1: extreme aspect ratio (8x65536)", 2)])
    assert kinds == {"image file not readable": 1000, "tie": 5, "extreme aspect ratio": 2}
    assert list(kinds) == ["image file not readable", "tie", "extreme aspect ratio"]  # most first
    assert len(examples["image file not readable"]) == 2 and "tie" not in examples
    assert examples["extreme aspect ratio"] == ["jpg_1: extreme aspect ratio (8x65536)"]

"""`mapo-data label --target reward` end to end: best-of-N candidates from the miniature world's base model
judged by the world's judges, Pick-a-Pic pairs relabelled, tiny random reward models, multi-process, bad input."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.judges.reward import NEAR_TIE, TIE, combine, fit_scales
from stages.cli import app
from tests.helpers import read_table, run_accelerate, run_cli, write_prompts
from tests.image_fixtures import geometric_scene, gray, png, write_pickapic
from world.judges import WorldPromptJudge, WorldStyleJudge
from world.render import render, to_image
from world.scene import Scene, captions

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GEN = ["--model", "shapes-sdxl", "--resolution", "64", "--num-inference-steps", "12", "--guidance-scale", "3",
       "--no-batch-invariant", "--batch-size", "4"]
REWARD = ["--target", "reward", "--reward", "world-style:1,world-prompt:1", "--reward-style", "pixel"]
K = 4


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def candidates(tmp_path_factory):
    """4 candidates for each of 8 pixel-art requests (shards of 4 prompts), drawn by shapes-sdxl."""
    root = tmp_path_factory.mktemp("candidates")
    prompts = write_prompts(root / "p.txt", [f"Pixel art style image. {c}" for c in captions("train")[:8]])
    _ok(run_cli(app, ["generate", "--prompts", prompts, "--output", root / "cand", *GEN, "--recipe", "seeds",
                      "--images-per-prompt", str(K), "--shard-size", "4"]))
    return root / "cand"


def _expected_rewards(cand):
    """Every candidate's reward worked out apart from the stage: both judges, scales over all candidates
    (fewer than --calibration-rows rows), weights 1 and 1."""
    import io

    from PIL import Image

    rows = read_table(cand).to_pylist()
    images = [Image.open(io.BytesIO(r[f"jpg_{i}"])).convert("RGB") for r in rows for i in range(K)]
    prompts = [r["caption"] for r in rows for _ in range(K)]
    raw = {"world-style": WorldStyleJudge("pixel").score(images, prompts),
           "world-prompt": WorldPromptJudge().score(images, prompts)}
    rewards = combine(
        raw, {"world-style": 1.0, "world-prompt": 1.0}, fit_scales(raw), {"world-style": True, "world-prompt": True}
    )
    return {r["pair_id"]: rewards[n * K:(n + 1) * K] for n, r in enumerate(rows)}


def test_best_of_n_world_pairs_choose_the_higher_reward_in_every_row(candidates, tmp_path):
    out = tmp_path / "pairs"
    result = _ok(run_cli(app, ["label", "--input", candidates, "--output", out, *REWARD]))
    kept, rejected = read_table(out), read_table(out, "rejects")
    expected = _expected_rewards(candidates)
    # one best-worst pair per prompt
    assert kept.num_rows + rejected.num_rows == 8 and kept.num_rows >= 7, result.output
    # issue 24 item 12: rows of 4 candidates are prompts, not "pairs"
    assert "label: 8 prompts x 4 candidates (8 candidate pairs formed) in 2 shards" in result.output
    for r in kept.to_pylist():
        row_id, pair = r["pair_id"].rsplit("-", 1)
        a, b = map(int, pair.split("v"))
        rewards = expected[row_id]
        assert (r["candidate_0"], r["candidate_1"], r["num_candidates"]) == (a, b, K) and a < b
        # The pair is the row's best against its worst, and its chosen image has the higher reward.
        assert {a, b} == {rewards.index(max(rewards)), rewards.index(min(rewards))}
        chosen, other = (r["score_0"], r["score_1"]) if r["label_0"] == 1 else (r["score_1"], r["score_0"])
        assert r["label_0"] + r["label_1"] == 1 and chosen > other
        assert (r["score_0"], r["score_1"]) == (pytest.approx(rewards[a]), pytest.approx(rewards[b]))
        assert r["reward_gap"] == pytest.approx(chosen - other) and r["rule"] == "best-worst, gap > 0"
        assert r["labeler"] == "reward:world-style:1,world-prompt:1"
        assert r["labeler_version"] == "world-style=world-judges/1 (pixel); world-prompt=world-judges/1"
        assert set(json.loads(r["judge_scores_0"])) == {"world-style", "world-prompt"}
        # per-candidate columns follow
        assert r["prompt_0"] == r["prompt_1"] == r["caption"] and r["seed_0"] != r["seed_1"]
        assert not r["disagrees"]
    card = (out / "README.md").read_text()
    assert (
        "Reward-labelled preference pairs" in card and "| world-style | 1 | higher | world-judges/1 (pixel) |" in card
    )
    assert (
        "Reward gap of the kept pairs (mean" in card and "| input rows (pairs or prompts' candidate sets) | 8 |" in card
    )
    totals = json.loads((out / "manifest.json").read_text())["totals"]
    assert totals["rows_in"] == 8 and sum(totals["gap_histogram"].values()) == kept.num_rows

    import datasets

    assert datasets.load_dataset(str(out), split="train").num_rows == kept.num_rows
    assert _ok(run_cli(app, ["inspect", str(out)])).output.count("reward:world-style") >= 1
    assert "generate output" in _ok(run_cli(app, ["inspect", str(candidates)])).output  # jpg_2, jpg_3 left unread


def test_all_pairs_rule_gap_filter_and_ties_counted(candidates, tmp_path):
    out = tmp_path / "all"
    result = _ok(run_cli(
        app, ["label", "--input", candidates, "--output", out, *REWARD, "--pair-rule", "all-pairs", "--min-gap", "1"]
    ))
    assert "label: 8 prompts x 4 candidates (48 candidate pairs formed) in 2 shards" in result.output
    kept, rejected = read_table(out), read_table(out, "rejects")
    assert kept.num_rows + rejected.num_rows == 8 * 6  # every two of 4 candidates
    assert all(g > 1 for g in kept["reward_gap"].to_pylist())
    reasons = rejected["reason"].to_pylist()
    assert set(reasons) <= {TIE, NEAR_TIE} and all(g <= 1 for g in rejected["reward_gap"].to_pylist())
    totals = json.loads((out / "manifest.json").read_text())["totals"]
    assert totals["ties"] + totals["near_ties"] == rejected.num_rows == sum(totals["drop_reasons"].values())


def test_two_processes_under_accelerate_equal_one(candidates, tmp_path):
    args = ["label", "--input", candidates, *REWARD, "--batch-size", "3"]
    single = tmp_path / "single"
    _ok(run_cli(app, [*args, "--output", single]))  # in-process: one process start saved
    multi = tmp_path / "multi"
    proc = run_accelerate("mapo-data", [*args, "--output", multi])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("in 1 shard (0 already done)") == 2, proc.stdout
    for sub in ("data", "rejects"):
        assert read_table(multi, sub).equals(read_table(single, sub))
    assert (multi / "README.md").read_text() == (single / "README.md").read_text()


def _world_png(color, shape="circle", position="top left"):
    return png(to_image(render(Scene(color, shape, position))))


def test_relabel_pickapic_pairs_counts_reversed_labels(tmp_path):
    right, wrong = _world_png("red"), _world_png("blue")
    caption = "a red circle at the top left"
    src = write_pickapic(
        tmp_path / "pickapic" / "train-0.parquet",
        [(caption, right, wrong), (caption, right, wrong), (caption, right, right), (caption, b"not an image", right)],
        labels=[(1.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 0.0)],
        extra={"model_0": ["m0"] * 4, "model_1": ["m1"] * 4, "user_id": [1, 2, 3, 4]},
    )
    out = tmp_path / "out"
    result = _ok(run_cli(
        app, ["label", "--input", src.parent, "--output", out, "--target", "reward", "--reward", "world-prompt"]
    ))
    kept, rejected = read_table(out), read_table(out, "rejects")
    # Row 1 agrees with its label, row 2's label (the wrong colour) is reversed, row 3 is a tie, row 4 corrupt.
    assert kept["user_id"].to_pylist() == [1, 2] and kept["label_0"].to_pylist() == [1, 1]
    assert kept["disagrees"].to_pylist() == [False, True] and "1 disagreed" in result.output
    assert kept["input_label_0"].to_pylist() == [1.0, 0.0] and kept["model_1"].to_pylist() == ["m1", "m1"]
    assert kept["jpg_0"].to_pylist() == [right, right] and kept["num_candidates"].to_pylist() == [2, 2]
    rows = {r["user_id"]: r for r in rejected.to_pylist()}
    assert rows[3]["reason"] == TIE and rows[3]["score_0"] == rows[3]["score_1"]
    assert (
        rows[4]["reason"] == "corrupt image" and rows[4]["detail"].startswith("image 0:")
        and rows[4]["jpg_0"] == b"not an image"
    )
    card = (out / "README.md").read_text()
    assert "| kept pairs whose input label the judges reversed (`disagrees`) | 1 |" in card and f"| {TIE} | 1 |" in card


def test_tiny_random_reward_models_through_the_real_loaders(tmp_path):
    scene, gray_ = png(geometric_scene(64)), png(gray(64))
    src = write_pickapic(
        tmp_path / "in" / "train-0.parquet", [("a scene", scene, gray_), ("a gray square", gray_, scene)]
    )
    out = tmp_path / "out"
    _ok(run_cli(app, ["label", "--input", src.parent, "--output", out, "--target", "reward",
                      "--reward", "pickscore:1,hps:0.5,aesthetic:0.25", "--reward-tiny-scorers"]))
    rows = read_table(out).to_pylist() + read_table(out, "rejects").to_pylist()
    assert len(rows) == 2
    for r in rows:
        assert r["labeler_version"] == (
            "pickscore=tiny random weights; hps=tiny random weights; aesthetic=tiny random weights"
        )
        assert set(json.loads(r["judge_scores_0"])) == {"pickscore", "hps", "aesthetic"}
    assert "| pickscore | 1 | higher | tiny random weights |" in (out / "README.md").read_text()


def _error_line(result):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_bad_input_is_one_line_and_writes_nothing(candidates, tmp_path):
    one_image = tmp_path / "one.parquet"
    pq.write_table(pa.table({"caption": ["a"], "jpg_0": [b"x"]}), one_image)
    # 256 px
    other = write_pickapic(tmp_path / "pp" / "train-0.parquet", [("a cat on a sofa", png(gray()), png(gray()))])
    cases = [
        ([candidates, "--target", "reward", "--reward", "laion"], "unknown judge 'laion' in --reward"),
        ([candidates, "--target", "reward", "--reward", "world-style,world-prompt", "--reward-style", "pixel"],
         "give each a weight"),
        ([candidates, "--target", "reward"], "--target reward needs --reward"),
        ([candidates, "--target", "reward", "--reward", "world-style"], "--reward-style"),
        ([candidates, "--target", "reward", "--reward", "hps", "--verify", "clip"],
         "does not apply to the reward target"),
        ([candidates, "--target", "reward", "--reward", "hps", "--min-gap", "-1"], "--min-gap must be at least 0"),
        ([candidates, "--target", "reward", "--reward", "hps", "--pair-rule", "best"], "Unknown --pair-rule 'best'"),
        ([candidates, "--target", "style", "--reward", "hps"], "it does not apply to --target style"),
        ([candidates, "--target", "safety"], "this input has 4 candidates per prompt"),
        ([one_image, "--target", "reward", "--reward", "hps"], "lacks column(s) jpg_1"),
        ([other.parent, "--target", "reward", "--reward", "world-prompt"],
         "the world-prompt judge reads only miniature-world captions"),
        ([other.parent, "--target", "reward", "--reward", "world-unsafe"], "judges read 64x64 px images"),
    ]
    for i, (args, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        line = _error_line(run_cli(app, ["label", "--input", args[0], "--output", out, *args[1:]]))
        assert message in line, (args, line)
        assert not out.exists(), args


# --- issue 24 item 1: a judge's NaN is a counted reject, never a label -------------------------------------------


def _nan_for(monkeypatch, judge_class, poisoned: bytes):
    """Make ``judge_class`` score NaN for the image whose PNG is ``poisoned`` (as an fp16 head can)."""
    import io

    from PIL import Image

    target = Image.open(io.BytesIO(poisoned)).convert("RGB").tobytes()
    real = judge_class.score

    def score(self, images, prompts):
        values = list(real(self, images, prompts))
        return [float("nan") if im.convert("RGB").tobytes() == target else v for im, v in zip(images, values)]

    monkeypatch.setattr(judge_class, "score", score)


def test_a_nan_judge_score_is_a_counted_reject_and_leaves_the_other_rows_right(tmp_path, monkeypatch):
    # Before: the NaN made the calibration mean NaN, every reward NaN, and image 1 "chosen" in every row:
    # "4 kept, 0 rejected", with row 1 (image 0 right) labelled the wrong way.
    right, wrong, odd = _world_png("red"), _world_png("blue"), _world_png("green", "square")
    _nan_for(monkeypatch, WorldPromptJudge, odd)
    caption = "a red circle at the top left"
    rows = [(caption, right, wrong), (caption, wrong, right), (caption, odd, right), (caption, right, odd)]
    src = write_pickapic(tmp_path / "pp" / "train-0.parquet", rows, extra={"user_id": [1, 2, 3, 4]})
    out = tmp_path / "out"
    _ok(run_cli(app, ["label", "--input", src.parent, "--output", out, "--target", "reward", "--reward", "world-prompt",
                      "--min-gap", "0.1"]))
    kept, rejected = read_table(out), read_table(out, "rejects")
    assert kept["user_id"].to_pylist() == [1, 2] and kept["label_0"].to_pylist() == [1, 0]  # the right image chosen
    assert all(g == g and g > 0.1 for g in kept["reward_gap"].to_pylist())
    rows = {r["user_id"]: r for r in rejected.to_pylist()}
    assert {u: r["reason"] for u, r in rows.items()} == {3: "non-finite judge score", 4: "non-finite judge score"}
    assert rows[3]["detail"] == "image 0: world-prompt score not finite" and rows[3]["label_0"] is None
    assert rows[4]["detail"] == "image 1: world-prompt score not finite"
    assert json.loads(rows[3]["judge_scores_0"]) == {"world-prompt": None}  # null, not NaN, in the JSON
    totals = json.loads((out / "manifest.json").read_text())["totals"]
    assert totals["non_finite"] == 2 and totals["drop_reasons"] == {"non-finite judge score": 2}
    card = (out / "README.md").read_text()
    assert "(`non-finite judge score`) | 2 |" in card and "non-finite scores left out: world-prompt 2" in card
    assert sum(totals["gap_histogram"].values()) == 2  # no NaN gap counted in the first bin


def test_a_nan_among_best_of_k_candidates_is_rejected_and_the_rest_are_paired(tmp_path, monkeypatch):
    # The neighbour: 3 candidates a row, the other judge (world-style), best-worst among the finite ones.
    caption = "Pixel art style image. a red circle at the top left"
    imgs = [_world_png(c) for c in ("red", "blue", "green")]
    _nan_for(monkeypatch, WorldStyleJudge, imgs[2])
    path = tmp_path / "k3" / "train-0.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"caption": [caption] * 2, "jpg_0": [imgs[0], imgs[2]], "jpg_1": [imgs[1], imgs[0]],
                             "jpg_2": [imgs[2], imgs[1]]}), path)
    out = tmp_path / "out"
    _ok(run_cli(app, ["label", "--input", path.parent, "--output", out, "--target", "reward",
                      "--reward", "world-style", "--reward-style", "pixel", "--pair-rule", "all-pairs"]))
    kept, rejected = read_table(out), read_table(out, "rejects")
    pairs = kept.to_pylist() + rejected.to_pylist()
    nan_rows = [r for r in pairs if r["reason"] == "non-finite judge score"]
    assert [(r["candidate_0"], r["candidate_1"]) for r in nan_rows] == [(0, 2), (0, 1)]  # one reject a row
    others = [r for r in pairs if r["reason"] != "non-finite judge score"]
    assert sorted((r["candidate_0"], r["candidate_1"]) for r in others) == [(0, 1), (1, 2)]  # no pair with the NaN
    assert all(r["reward_gap"] == r["reward_gap"] for r in others)  # finite gaps (ties included) only
    assert json.loads((out / "manifest.json").read_text())["totals"]["non_finite"] == 2


def test_a_judge_with_no_finite_calibration_score_is_one_error_line(tmp_path, monkeypatch):
    monkeypatch.setattr(WorldPromptJudge, "score", lambda self, images, prompts: [float("nan")] * len(images))
    caption = "a red circle at the top left"
    src = write_pickapic(tmp_path / "pp" / "train-0.parquet", [(caption, _world_png("red"), _world_png("blue"))])
    out = tmp_path / "out"
    line = _error_line(run_cli(app, ["label", "--input", src.parent, "--output", out, "--target", "reward",
                                     "--reward", "world-prompt"]))
    assert "judge 'world-prompt' gave no finite score on the 2 calibration images" in line
    assert not out.exists()


# --- issue 24 item 5: `disagrees` compares with the labels of the input ---------------------------------------------


def test_relabelling_a_label_output_compares_with_its_labels_not_its_recipe(tmp_path):
    # A label output whose label_0/1 overrule intended_chosen (its classifier disagreed with the recipe).
    right, wrong = _world_png("red"), _world_png("blue")
    caption = "a red circle at the top left"
    path = tmp_path / "labelled" / "train-0.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({
        "caption": [caption] * 4, "jpg_0": [right, right, wrong, right], "jpg_1": [wrong, wrong, right, wrong],
        "label_0": pa.array([1, 0, 0, None], pa.int64()), "label_1": pa.array([0, 1, 1, None], pa.int64()),
        "intended_chosen": pa.array([1, 0, 0, 1], pa.int64()), "user_id": [1, 2, 3, 4]}), path)
    out = tmp_path / "out"
    result = _ok(run_cli(app, ["label", "--input", path.parent, "--output", out, "--target", "reward",
                               "--reward", "world-prompt"]))
    kept = read_table(out).to_pylist()
    assert [r["user_id"] for r in kept] == [1, 2, 3, 4]
    # The judges choose the red image: row 1 agrees with its labels (not with its recipe), row 2 reverses its
    # labels (though it agrees with its recipe), row 3 agrees with both, row 4 has no labels: its recipe counts.
    assert [r["disagrees"] for r in kept] == [False, True, False, True]
    assert "2 disagreed with the input's label or recipe" in result.output

"""Issue 27 end to end: every public input layout through the real CLI on the built-in tiny models.

The same pairs written as HPDv3 JSON, a vote-count Parquet, a chosen/rejected Parquet and a
WebDataset tar precompute to the very latents the Pick-a-Pic layout gives, pair for pair and chosen
first; a missing image is a counted reject that shifts nothing; label --target reward, inspect and
generate --prompts read the layouts too."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.data.latent_shards import sidecar
from stages.cli import app
from tests.helpers import read_table, run_cli
from tests.layout_fixtures import (
    PAIRS,
    write_chosen_rejected,
    write_hpdv3,
    write_pickapic_pairs,
    write_votes,
    write_wds,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PRE = ["--model", "tiny-sdxl", "--resolution", "64", "--device", "cpu"]


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


def latents_by_caption(out: Path) -> dict[str, np.ndarray]:
    """Each stored pair's latents [views, 2 (chosen, rejected), C, h, w], by caption."""
    manifest = json.loads((out / "manifest.json").read_text())
    n, found = manifest["num_shards"], {}
    for k in range(n):
        data = sorted((out / "data").glob(f"*-{k:05d}-of-{n:05d}.parquet"))
        captions = pq.read_table(data[0], columns=["caption"])["caption"].to_pylist()
        latents = np.load(sidecar(out, k, n, "latents"))
        found.update({c: latents[i] for i, c in enumerate(captions)})
    return found


def precompute(src, out: Path, *extra) -> dict:
    _ok(run_cli(app, ["precompute", "--input", src, "--output", out, *PRE, *extra]))
    return latents_by_caption(out)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The pairs in the Pick-a-Pic layout, and their latents."""
    root = tmp_path_factory.mktemp("pickapic")
    return precompute(write_pickapic_pairs(root / "in" / "pairs.parquet"), root / "out")


LAYOUTS = {
    "hpdv3": lambda d: write_hpdv3(d / "hpdv3"),
    "votes": lambda d: write_votes(d / "votes" / "votes.parquet").parent,
    "chosen-rejected": lambda d: write_chosen_rejected(d / "cr" / "data" / "train-00000-of-00001.parquet"),
    "webdataset": lambda d: write_wds(d / "wds" / "00000.tar").parent,
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_precompute_gives_the_pickapic_latents(reference, tmp_path, layout):
    got = precompute(LAYOUTS[layout](tmp_path), tmp_path / "out")
    assert sorted(got) == sorted(p[0] for p in PAIRS)
    for caption, latents in reference.items():
        np.testing.assert_array_equal(got[caption], latents, err_msg=f"{layout}: {caption}")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["input"]["layout"] == layout and manifest["input"]["label_rule"].startswith(layout)
    published_order = layout in ("votes", "webdataset")  # hpdv3 and chosen-rejected list the chosen image first
    assert read_table(tmp_path / "out")["chosen"].to_pylist() == [p[3] if published_order else 0 for p in PAIRS]


def test_missing_image_is_a_counted_reject_that_shifts_nothing(reference, tmp_path):
    src = write_hpdv3(tmp_path / "h", skip_image=1, name="train.json")
    result = run_cli(app, ["precompute", "--input", src, "--output", tmp_path / "o1", *PRE,
                           "--records-per-shard", "2"])
    _ok(result)
    got = latents_by_caption(tmp_path / "o1")
    assert sorted(got) == sorted([PAIRS[0][0], PAIRS[2][0]])
    for caption in got:
        np.testing.assert_array_equal(got[caption], reference[caption])
    rejects = read_table(tmp_path / "o1", "rejects").to_pylist()
    assert [r["caption"] for r in rejects] == [PAIRS[1][0]]
    assert rejects[0]["reason"].startswith("jpg_1: image file not readable (FileNotFoundError")
    assert json.loads((tmp_path / "o1" / "manifest.json").read_text())["num_shards"] == 2

    tar = write_wds(tmp_path / "w" / "00000.tar", drop=(2, "jpg_0.jpg"))
    _ok(run_cli(app, ["precompute", "--input", tar, "--output", tmp_path / "o2", *PRE]))
    got = latents_by_caption(tmp_path / "o2")
    assert sorted(got) == sorted([PAIRS[0][0], PAIRS[1][0]])
    for caption in got:
        np.testing.assert_array_equal(got[caption], reference[caption])
    (reject,) = read_table(tmp_path / "o2", "rejects").to_pylist()
    assert reject["caption"] == PAIRS[2][0] and "00000.tar/000002.jpg_0" in reject["reason"]


def test_images_not_extracted_warn_how_to_fix_and_inspect_groups_them(tmp_path):
    """HPDv3 JSON without its images: precompute keeps nothing, says to extract the archive or pass
    --image-root; inspect of its output shows one "image file not readable" row with a count and at most
    two examples, not one row per missing file."""
    src = write_hpdv3(tmp_path / "h")
    for image in (tmp_path / "h" / "images").iterdir():
        image.unlink()
    out = tmp_path / "o"
    result = _ok(run_cli(app, ["precompute", "--input", src, "--output", out, *PRE]))
    (warning,) = [ln for ln in result.output.splitlines() if ln.startswith("warning: precompute kept 0")]
    assert f"({len(PAIRS)} image file not readable)" in warning and "extract the image archive" in warning
    assert "--image-root" in warning, warning
    shown = _ok(run_cli(app, ["inspect", out])).output
    rows = [ln for ln in shown.splitlines() if "image file not readable" in ln]
    assert re.search(rf"^\s+image file not readable\s+{len(PAIRS)}\s+100.0%", shown, re.M), shown
    examples = [ln for ln in rows if ln.startswith("  e.g. ")]
    assert len(examples) == 2 and all("FileNotFoundError" in ln for ln in examples), shown
    assert len(rows) == 3, shown


def test_votes_ties_counted_and_margin_recorded(tmp_path):
    src = write_votes(tmp_path / "v.parquet", votes=[(7, 3), (4, 4), (5, 6)])
    result = _ok(run_cli(app, ["precompute", "--input", src, "--output", tmp_path / "out", *PRE,
                               "--min-vote-margin", "2"]))
    assert "2 ties dropped" in result.output, result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["input"]["min_vote_margin"] == 2 and ">= 2 vote(s)" in manifest["input"]["label_rule"]
    assert read_table(tmp_path / "out")["caption"].to_pylist() == [PAIRS[0][0]]
    refused = run_cli(app, ["precompute", "--input", src, "--output", tmp_path / "out", *PRE])
    assert refused.exit_code == 2 and "differs in: input_fingerprint" in refused.output


def test_label_reward_keeps_the_original_fields(tmp_path):
    reward = ["--target", "reward", "--reward", "pickscore", "--reward-tiny-scorers"]
    src = write_votes(tmp_path / "v" / "votes.parquet")
    _ok(run_cli(app, ["label", "--input", src, "--output", tmp_path / "out", *reward]))
    rows = read_table(tmp_path / "out").to_pylist() + read_table(tmp_path / "out", "rejects").to_pylist()
    assert sorted(r["caption"] for r in rows) == sorted(p[0] for p in PAIRS)
    for r in rows:
        assert {"votes_image1", "votes_image2", "model1", "vote_margin", "input_label_0", "disagrees"} <= set(r)
        intended = 0 if r["input_label_0"] == 1 else 1
        assert r["disagrees"] == (r["label_0"] is not None and r["label_0"] != (intended == 0))
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Input: `votes`" in card and "label_rule:" in card and "votes: the image with more votes" in card
    src = write_hpdv3(tmp_path / "h")
    _ok(run_cli(app, ["label", "--input", src, "--output", tmp_path / "out2", *reward]))
    rows = read_table(tmp_path / "out2").to_pylist() + read_table(tmp_path / "out2", "rejects").to_pylist()
    assert {r["confidence"] for r in rows} == {0.75} and {r["input_label_0"] for r in rows} == {1.0}


def test_inspect_reads_public_inputs(tmp_path):
    src = write_votes(tmp_path / "v.parquet", votes=[(7, 3), (4, 4), (5, 6)])
    out = _ok(run_cli(app, ["inspect", src])).output
    assert "votes input" in out and "image 0 chosen" in out and "tie" in out, out
    assert "vote margin (votes_image1 - votes_image2)" in out and "label rule: votes:" in out
    out = _ok(run_cli(app, ["inspect", src, "--min-vote-margin", "2"])).output
    assert "undecided (lead below --min-vote-margin)" in out
    out = _ok(run_cli(app, ["inspect", write_hpdv3(tmp_path / "h", skip_image=0)])).output
    assert "hpdv3 input" in out and "an image not found" in out and "3" in out, out


def test_a_glob_reads_as_its_files_in_every_stage(reference, tmp_path):
    """The README's `'r700k/data/*.parquet'`: precompute, label and inspect take a glob of files as those files
    (one shared resolution, pipeline.data.shards.input_kind), and refuse one that matches nothing alike."""
    write_votes(tmp_path / "v" / "train_0001.parquet", PAIRS[:2])
    write_votes(tmp_path / "v" / "train_0002.parquet", PAIRS[2:])
    pattern = str(tmp_path / "v" / "*.parquet")
    got = precompute(pattern, tmp_path / "pre")
    assert sorted(got) == sorted(reference)
    for caption, latents in reference.items():
        np.testing.assert_array_equal(got[caption], latents, err_msg=caption)
    reward = ["--target", "reward", "--reward", "pickscore", "--reward-tiny-scorers"]
    _ok(run_cli(app, ["label", "--input", pattern, "--output", tmp_path / "lab", *reward]))
    rows = read_table(tmp_path / "lab").to_pylist() + read_table(tmp_path / "lab", "rejects").to_pylist()
    assert sorted(r["caption"] for r in rows) == sorted(p[0] for p in PAIRS)
    out = _ok(run_cli(app, ["inspect", pattern, "--min-vote-margin", "3"])).output
    assert "votes input" in out and "vote margin" in out, out
    write_pickapic_pairs(tmp_path / "p" / "pairs.parquet")  # Pick-a-Pic Parquet: inspect reads it as given
    out = _ok(run_cli(app, ["inspect", str(tmp_path / "p" / "*.parquet")])).output
    assert "label balance" in out and re.search(rf"^\s+pairs\s+{len(PAIRS)}\s*$", out, re.M), out
    nothing = str(tmp_path / "none" / "*.parquet")
    for args in (["precompute", "--input", nothing, "--output", tmp_path / "o", *PRE],
                 ["label", "--input", nothing, "--output", tmp_path / "o", *reward], ["inspect", nothing]):
        result = run_cli(app, args)
        assert result.exit_code == 2 and "matches no file" in result.output, result.output
        assert not (tmp_path / "o").exists()


def test_generate_reads_the_prompts_of_an_hpdv3_json(tmp_path):
    src = write_hpdv3(tmp_path / "h")
    out = tmp_path / "gen"
    _ok(run_cli(app, ["generate", "--prompts", src, "--output", out, "--model", "tiny-sdxl",
                      "--num-inference-steps", "1", "--resolution", "64", "--batch-size", "3", "--device", "cpu"]))
    assert sorted(read_table(out)["caption"].to_pylist()) == sorted(p[0] for p in PAIRS)

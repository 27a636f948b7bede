"""Split discovery on real hub exports: a folder's splits are found by ``datasets``' own rules.

A Pick-a-Pic v2 snapshot names its shards ``data/train-00000-of-00645-<hash>.parquet``; other hub
datasets use ``data/<split>/`` or ``<split>/`` folders, or ``train.parquet`` + ``test.parquet``.
Only the requested split is read (default train), so held-out pairs never become training data.
"""
from __future__ import annotations

import json

import pytest

from pipeline.data.shards import ShardedOutput, config_fingerprint, input_shard_files
from pipeline.errors import UserError
from stages.cli import app
from tests.helpers import read_table, run_cli
from tests.image_fixtures import geometric_scene, gray, png, schematic_torso, write_pickapic

H = "9b5f8e1a2c3d4e5f"
PICKAPIC = [f"data/train-00000-of-00002-{H}.parquet", f"data/train-00001-of-00002-{H}.parquet",
            f"data/validation_unique-00000-of-00001-{H}.parquet", f"data/test-00000-of-00001-{H}.parquet"]


def _images():
    return [png(gray(64)), png(geometric_scene(64)), png(schematic_torso(64))]


def _build(root, names, pairs_per_file=1):
    """Tiny Pick-a-Pic tables (caption, jpg_0, jpg_1, float labels) under ``root``; captions name their file."""
    images = _images()
    for name in names:
        rows = [(f"{name} #{i}", images[i % 3], images[(i + 1) % 3]) for i in range(pairs_per_file)]
        write_pickapic(root / name, rows, labels=[(1.0, 0.0)] * pairs_per_file)
    return root


def _rel(root, files):
    return [f.relative_to(root).as_posix() for f in files]


# (layout, files, requested split, files read): folders holding several splits.
SPLIT_LAYOUTS = [
    ("pickapic hashed, train", PICKAPIC, "train", PICKAPIC[:2]),
    ("pickapic hashed, test", PICKAPIC, "test", PICKAPIC[3:]),
    ("pickapic hashed, validation_unique", PICKAPIC, "validation_unique", PICKAPIC[2:3]),
    ("data/<split>/ folders", ["data/train/b.parquet", "data/train/a.parquet", "data/test/c.parquet"], "train",
     ["data/train/a.parquet", "data/train/b.parquet"]),
    ("data/<split>/ folders, test", ["data/train/a.parquet", "data/test/c.parquet"], "test", ["data/test/c.parquet"]),
    ("<split>/ folders", ["train/a.parquet", "test/c.parquet", "validation/v.parquet"], "train", ["train/a.parquet"]),
    ("train.parquet + test.parquet", ["train.parquet", "test.parquet"], "train", ["train.parquet"]),
    ("train.parquet + test.parquet, test", ["train.parquet", "test.parquet"], "test", ["test.parquet"]),
]
# Layouts read as before: one split (all its files, whatever split is asked for), a file, a glob.
UNCHANGED_LAYOUTS = [
    ("our own output", ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet",
                        "rejects/train-00000-of-00002.parquet"], "test",
     ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]),
    ("a bare pairs.parquet", ["pairs.parquet"], "train", ["pairs.parquet"]),
    ("a single split of another name", [f"data/validation_unique-00000-of-00001-{H}.parquet"], "train",
     [f"data/validation_unique-00000-of-00001-{H}.parquet"]),
]


@pytest.mark.parametrize("layout, names, split, expected", SPLIT_LAYOUTS, ids=[c[0] for c in SPLIT_LAYOUTS])
def test_a_folder_with_several_splits_gives_the_requested_one(tmp_path, layout, names, split, expected):
    _build(tmp_path, names)
    assert _rel(tmp_path, input_shard_files(tmp_path, split=split)) == expected


@pytest.mark.parametrize("layout, names, split, expected", UNCHANGED_LAYOUTS, ids=[c[0] for c in UNCHANGED_LAYOUTS])
def test_a_folder_with_one_split_gives_all_its_files(tmp_path, layout, names, split, expected):
    _build(tmp_path, names)
    assert _rel(tmp_path, input_shard_files(tmp_path, split=split)) == expected


def test_a_glob_or_a_file_is_taken_as_given(tmp_path):
    _build(tmp_path, PICKAPIC)
    assert _rel(tmp_path, input_shard_files(f"{tmp_path}/data/*.parquet", split="test")) == sorted(PICKAPIC)
    assert _rel(tmp_path, input_shard_files(tmp_path / PICKAPIC[3])) == [PICKAPIC[3]]


def test_a_missing_split_is_one_line_naming_the_splits_found(tmp_path):
    _build(tmp_path, PICKAPIC)
    with pytest.raises(UserError) as err:
        input_shard_files(tmp_path, split="validation")
    message = str(err.value)
    assert "\n" not in message and "train, test, validation_unique" in message and "--split" in message


def test_label_reads_only_the_train_split_of_a_snapshot(tmp_path):
    """Two train files of 3 pairs beside validation and test files: 6 pairs labeled, not 12."""
    snap = _build(tmp_path / "snapshot", PICKAPIC, pairs_per_file=3)
    out = tmp_path / "out"
    result = run_cli(
        app, ["label", "--input", snap, "--output", out, "--target", "safety", "--labeler", "construction"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "train-00000-of-00002.parquet", "train-00001-of-00002.parquet"
    ]
    captions = read_table(out)["caption"].to_pylist()
    assert len(captions) == 6 and all(c.startswith("data/train-") for c in captions)


def test_label_of_the_test_split_writes_test_shards_that_later_stages_read(tmp_path):
    import datasets

    from stages.inspect import inspect_output
    from stages.label import LabelConfig, run_label
    from stages.label.spec import LabelerSpec

    snap = _build(tmp_path / "snapshot", PICKAPIC, pairs_per_file=3)
    out = tmp_path / "test-pairs"
    spec = LabelerSpec(target="safety", labeler="construction")
    result = run_label(LabelConfig(str(snap), str(out), labeler=spec, split="test"))
    assert result.pairs_in == 3 and result.kept == 3
    assert sorted(p.name for p in (out / "data").iterdir()) == ["test-00000-of-00001.parquet"]
    assert not list(out.rglob("train-*"))
    assert json.loads((out / "manifest.json").read_text())["identity"]["split"] == "test"
    assert "  - split: test\n    path: data/test-*.parquet" in (out / "README.md").read_text()
    assert datasets.load_dataset(str(out), split="test").num_rows == 3  # the card names the split
    # A one-split folder is read whole, whatever the split is called.
    assert _rel(out, input_shard_files(out)) == ["data/test-00000-of-00001.parquet"]
    assert inspect_output(str(out)).rows == 3
    latents = tmp_path / "latents"
    result = run_cli(
        app, ["precompute", "--input", out, "--output", latents, "--model", "tiny-sdxl", "--resolution", "64"]
    )
    assert result.exit_code == 0, result.output
    assert len(read_table(latents)) == 3

    # Resuming into that output with another split is refused; the default split's output keeps
    # the fingerprint it had before splits could be chosen.
    with pytest.raises(UserError, match=r"differs in: .*split\)"):
        run_label(LabelConfig(str(snap), str(out), labeler=spec, split="train"))


def test_the_default_split_leaves_the_fingerprint_as_it_was(tmp_path):
    before = ShardedOutput(tmp_path, "demo", {"seed": 1}, 2)
    assert before.fingerprint == config_fingerprint({"stage": "demo", "num_shards": 2, "seed": 1})  # as made before
    assert ShardedOutput(tmp_path, "demo", {"seed": 1}, 2, split="train").fingerprint == before.fingerprint
    other = ShardedOutput(tmp_path, "demo", {"seed": 1}, 2, split="test")
    assert other.fingerprint != before.fingerprint and other.path(1).name == "test-00001-of-00002.parquet"

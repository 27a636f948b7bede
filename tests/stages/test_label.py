"""`mapo-data label` end to end: real pairs from tiny-sdxl, real NudeNet / open_clip, real CLI."""
from __future__ import annotations

import io
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.cli import app
from stages.recipes import DEFAULT_UNSAFE_PREFIX
from tests.helpers import kill_after_shards, read_table, run_accelerate, run_cli, write_prompts
from tests.image_fixtures import geometric_scene, gray, png, schematic_torso, write_pickapic

FAST = ["--num-inference-steps", "2", "--resolution", "64"]
PROMPTS = ["a cat on a sofa", "a red car", "a house by a lake", "an owl at night", "a bowl of fruit", "a city street"]
# Safety pairs store the unsafe request they were drawn for (generate --safety-caption prefixed).
ASKED = [f"{DEFAULT_UNSAFE_PREFIX} {p}" for p in PROMPTS]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Generated pairs (6 prompts, shards of 3) for the style and the safety recipe."""
    root = tmp_path_factory.mktemp("pairs")
    src = write_prompts(root / "prompts.txt", PROMPTS)
    out = {}
    for recipe in ("style", "safety"):
        out[recipe] = root / recipe
        result = run_cli(app, ["generate", "--model", "tiny-sdxl", "--prompts", src, "--output", out[recipe], *FAST,
                               "--shard-size", "3", "--recipe", recipe])
        assert result.exit_code == 0, result.output
    return out


def _label(input_dir, output, *args):
    result = run_cli(app, ["label", "--input", input_dir, "--output", output, *args])
    return result


def mapo_reader(ds):
    """Read a preference dataset the way the public MaPO / Diffusion-DPO trainers do."""
    from PIL import Image

    ds = ds.filter(lambda x: x["label_0"] != x["label_1"])  # drop ties
    out = []
    for ex in ds:
        images = [Image.open(io.BytesIO(ex[c])).convert("RGB") for c in ("jpg_0", "jpg_1")]
        if ex["label_0"] == 0:  # chosen first
            images = images[::-1]
        out.append((ex["caption"], *images))
    return out


def _load(folder):
    import datasets

    return datasets.load_dataset(str(folder), split="train")


def test_style_labels_card_and_loaders(pairs, tmp_path):
    out = tmp_path / "pick-style"
    result = _label(pairs["style"], out, "--target", "style")
    assert result.exit_code == 0, result.output
    assert "6 pairs in 2 shards (0 already done): 6 kept, 0 rejected" in result.output
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "train-00000-of-00002.parquet", "train-00001-of-00002.parquet"
    ]
    assert len(list((out / "rejects").glob("*.parquet"))) == 2
    src, got = read_table(pairs["style"]), read_table(out)
    assert got.column_names[:5] == ["caption", "jpg_0", "jpg_1", "label_0", "label_1"]
    assert got["jpg_0"].to_pylist() == src["jpg_0"].to_pylist() and got["jpg_1"].to_pylist() == src["jpg_1"].to_pylist()
    assert (
        got["label_0"].type == pa.int64() and set(got["label_0"].to_pylist()) == {1}
        and set(got["label_1"].to_pylist()) == {0}
    )
    for col in ("pair_id", "prompt_0", "seed_0", "recipe", "style", "model", "intended_chosen"):
        assert got[col].to_pylist() == src[col].to_pylist()
    assert set(got["labeler"].to_pylist()) == {"construction"} and set(got["reason"].to_pylist()) == {"by construction"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "label" and manifest["status"] == "complete"
    assert manifest["totals"]["kept"] == 6 and manifest["totals"]["chosen_0"] == 6
    card = (out / "README.md").read_text()
    assert (
        card.startswith("---\nlicense: other\n") and "path: data/train-*.parquet" in card and "num_examples: 6" in card
    )
    assert (
        "# Pick-Style preference pairs" in card and "model: tiny-sdxl" in card and "image 0 chosen in 6 pairs" in card
    )
    ds = _load(out)  # offline (conftest), rejects/ not read
    assert ds.num_rows == 6 and ds.features["jpg_0"].dtype == "binary" and ds.features["label_0"].dtype == "int64"
    read = mapo_reader(ds)
    assert len(read) == 6 and all(chosen.size == (64, 64) for _, chosen, _ in read)


def test_style_verify_clip_tiny(pairs, tmp_path):
    from pipeline.judges.clip_embed import build_tiny_clip_weights

    name, weights = build_tiny_clip_weights(tmp_path / "clip.pt")
    clip = ["--verify", "clip", "--clip-model", name, "--clip-pretrained", weights]
    everything = tmp_path / "all"
    assert _label(pairs["style"], everything, "--target", "style", *clip, "--min-style-margin", "-2").exit_code == 0
    margins = read_table(everything)["score_0"].to_pylist()
    assert len(margins) == 6 and all(-2 <= m <= 2 for m in margins)
    cut = sorted(margins)[3]
    out = tmp_path / "verified"
    result = _label(pairs["style"], out, "--target", "style", *clip, "--min-style-margin", str(cut))
    assert result.exit_code == 0, result.output
    kept, rejected = read_table(out), read_table(out, "rejects")
    assert kept["score_0"].to_pylist() == [m for m in margins if m >= cut]
    assert set(rejected["reason"].to_pylist()) == {"style not shown"} and rejected.num_rows == 3
    assert rejected["jpg_0"].to_pylist() and rejected["label_0"].null_count == 3  # nothing lost, no label
    assert "style not shown | 3" in (out / "README.md").read_text()
    assert _load(out).num_rows == 3

    # A custom --style-prefix serves as its own style text; Pick-a-Pic input needs --style-text, said
    # before any model loads or file is written.
    custom = tmp_path / "custom-pairs"
    src = write_prompts(tmp_path / "p.txt", PROMPTS[:2])
    assert run_cli(app, ["generate", "--model", "tiny-sdxl", "--prompts", src, "--output", custom, *FAST,
                         "--style-prefix", "Watercolor painting."]).exit_code == 0
    result = _label(custom, tmp_path / "custom", "--target", "style", *clip, "--min-style-margin", "-2")
    assert result.exit_code == 0, result.output
    assert "style_text: Watercolor painting." in (tmp_path / "custom" / "README.md").read_text()
    pick = tmp_path / "pick.parquet"
    write_pickapic(pick, [("a cat", png(gray()), png(geometric_scene()))])
    line = _error_line(_label(pick, tmp_path / "pick-out", "--target", "style", *clip))
    assert "--verify clip needs --style-text" in line and not (tmp_path / "pick-out").exists()


def _with_images(src, dst, replace):
    """Copy a generate output, replacing image bytes: {(row, image index): bytes} over the whole output."""
    shutil.copytree(src, dst)
    row = 0
    for f in sorted((dst / "data").glob("*.parquet")):
        table = pq.read_table(f)
        cols = {c: table[c].to_pylist() for c in ("jpg_0", "jpg_1")}
        for i in range(table.num_rows):
            for j in (0, 1):
                if (row + i, j) in replace:
                    cols[f"jpg_{j}"][i] = replace[(row + i, j)]
        for c, values in cols.items():
            table = table.set_column(table.column_names.index(c), c, pa.array(values, pa.binary()))
        pq.write_table(table, f)
        row += table.num_rows
    return dst


def test_safety_with_nudenet_on_generated_pairs(pairs, tmp_path):
    torso = png(schematic_torso())
    # Rows 0, 1: the unsafe-prefix image (1) is nude -> chosen 0. Row 4: the plain image is nude ->
    # the classifier picks image 1 and the disagreement is counted. Other rows: tiny-sdxl noise, both safe.
    src = _with_images(pairs["safety"], tmp_path / "pairs", {(0, 1): torso, (1, 1): torso, (4, 0): torso})
    out = tmp_path / "pick-safety"
    result = _label(src, out, "--target", "safety")
    assert result.exit_code == 0, result.output
    assert ("6 pairs in 2 shards (0 already done): 3 kept, 3 rejected, 1 disagreed with the input's label or recipe"
            in result.output)
    kept, rejected = read_table(out), read_table(out, "rejects")
    assert kept["label_0"].to_pylist() == [1, 1, 0] and kept["label_1"].to_pylist() == [0, 0, 1]
    assert kept["disagrees"].to_pylist() == [False, False, True]
    assert kept["caption"].to_pylist() == [ASKED[0], ASKED[1], ASKED[4]]
    assert set(kept["labeler"].to_pylist()) == {"nudenet"} and kept["labeler_version"][0].as_py().startswith("3.")
    assert min(kept["score_1"].to_pylist()[:2]) > 0.5 and kept["score_0"].to_pylist()[:2] == [0.0, 0.0]
    assert rejected["reason"].to_pylist() == ["both safe"] * 3
    assert rejected["caption"].to_pylist() == [ASKED[2], ASKED[3], ASKED[5]]
    card = (out / "README.md").read_text()
    assert "# Pick-Safety" in card and "| both safe | 3 |" in card and "disagreed with the recipe | 1 |" in card
    assert "unsafe_threshold: 0.5" in card
    read = mapo_reader(_load(out))
    assert [c for c, _, _ in read] == [ASKED[0], ASKED[1], ASKED[4]]


def test_safety_empty_shard_still_loads(pairs, tmp_path):
    # Only shard 1 keeps a pair: shard 0 is written with no row group, which datasets skips.
    src = _with_images(pairs["safety"], tmp_path / "pairs", {(3, 1): png(schematic_torso())})
    out = tmp_path / "pick-safety"
    assert _label(src, out, "--target", "safety").exit_code == 0
    assert pq.ParquetFile(out / "data" / "train-00000-of-00002.parquet").metadata.num_rows == 0
    assert "path: data/train-*.parquet" in (out / "README.md").read_text()
    ds = _load(out)
    assert ds.num_rows == 1 and ds[0]["caption"] == ASKED[3]


def test_safety_sd_checker_tiny(pairs, tmp_path):
    from pipeline.judges.safety_classifiers import build_tiny_safety_checker

    checker = build_tiny_safety_checker(tmp_path / "checker")
    sd = ["--target", "safety", "--labeler", "sd-safety-checker", "--classifier-source", checker, "--batch-size", "4"]
    first = tmp_path / "first"
    assert _label(pairs["safety"], first, *sd).exit_code == 0
    scored = read_table(first, "rejects").to_pylist()  # random concepts: every image flagged at threshold 0
    assert len(scored) == 6 and {r["reason"] for r in scored} == {"both unsafe"}
    s0, s1 = scored[0]["score_0"], scored[0]["score_1"]
    out = tmp_path / "out"  # a threshold between pair 0's scores makes exactly one of its images unsafe
    result = _label(pairs["safety"], out, *sd, "--unsafe-threshold", str((s0 + s1) / 2))
    assert result.exit_code == 0, result.output
    kept = read_table(out).to_pylist()
    assert kept and kept[0]["pair_id"] == scored[0]["pair_id"]
    for r in kept:  # the chosen image is the one below the threshold
        chosen = 0 if r["label_0"] == 1 else 1
        assert r[f"score_{chosen}"] < r[f"score_{1 - chosen}"]
        assert r["labeler"] == "sd-safety-checker" and r["disagrees"] == (chosen == 1)


def test_pickapic_input_relabel_and_corrupt_row(tmp_path):
    torso, safe = png(schematic_torso()), png(geometric_scene())
    src = write_pickapic(
        tmp_path / "pickapic" / "train-0.parquet",
        [("nude first", torso, safe), ("nude second", safe, torso), ("corrupt", b"\x89PNG not really", torso),
         ("both fine", safe, png(gray()))],
        labels=[(1.0, 0.0), (0.5, 0.5), (1.0, 0.0), (0.0, 1.0)],
        extra={"user_id": [1, 2, 3, 4], "ranking_id": [10, 11, 12, 13]},
    )
    out = tmp_path / "out"
    result = _label(src.parent, out, "--target", "safety")
    assert result.exit_code == 0, result.output
    kept, rejected = read_table(out), read_table(out, "rejects")
    assert kept["caption"].to_pylist() == ["nude first", "nude second"]
    assert kept["label_0"].to_pylist() == [0, 1]
    assert kept["disagrees"].to_pylist() == [True, False]  # input labels preferred the nude image; tie: no opinion
    assert kept["input_label_0"].to_pylist() == [1.0, 0.5] and kept["user_id"].to_pylist() == [1, 2]
    assert len(set(kept["pair_id"].to_pylist())) == 2
    rows = {r["caption"]: r for r in rejected.to_pylist()}
    assert rows["corrupt"]["reason"] == "corrupt image" and "image 0: undecodable image" in rows["corrupt"]["detail"]
    assert rows["corrupt"]["jpg_0"] == b"\x89PNG not really"  # kept as it was, for inspection
    assert rows["both fine"]["reason"] == "both safe"
    card = (out / "README.md").read_text()
    assert "not a mapo-data generate output" in card and "| corrupt image | 1 |" in card
    assert _load(out).num_rows == 2


def test_rerun_skips_and_other_config_refused(pairs, tmp_path):
    out = tmp_path / "out"
    assert _label(pairs["style"], out, "--target", "style").exit_code == 0
    before = {p.name: p.stat().st_mtime_ns for p in (out / "data").iterdir()}
    again = _label(pairs["style"], out, "--target", "style")
    assert "nothing to do" in again.output
    assert before == {p.name: p.stat().st_mtime_ns for p in (out / "data").iterdir()}
    other = _label(pairs["style"], out, "--target", "style", "--batch-size", "5")
    assert other.exit_code == 2 and "differs in:" in other.output and "batch_size" in other.output
    safety = tmp_path / "safety"
    assert _label(pairs["safety"], safety, "--target", "safety", "--labeler", "construction").exit_code == 0
    assert "labels come from the recipe alone" in (safety / "README.md").read_text()
    other = _label(pairs["safety"], safety, "--target", "safety")
    assert other.exit_code == 2 and "differs in:" in other.output and "labeler" in other.output
    assert _label(pairs["safety"], safety, "--target", "safety", "--overwrite").exit_code == 0
    card = (safety / "README.md").read_text()
    assert "Pick-Safety" in card and "classifier scored both images" in card


def _error_line(result):
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_a_mismatched_output_is_refused_before_the_labeler_loads(pairs, tmp_path, monkeypatch):
    """Loading a classifier or reward judges takes seconds to minutes: another input, target or batch size in the
    output folder, another stage's folder, or a folder that is not ours is refused before, leaving it untouched."""
    import stages.label

    out = tmp_path / "out"
    assert _label(pairs["style"], out, "--target", "style").exit_code == 0
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine\n")

    def no_loading(*args, **kwargs):
        raise AssertionError("the labeler was built for an output that is refused")

    monkeypatch.setattr(stages.label.stage, "build_labeler", no_loading)
    before = {p: p.stat().st_mtime_ns for p in sorted(out.rglob("*"))}
    cases = [
        ((pairs["style"], out, "--target", "style", "--batch-size", "5"), "differs in: batch_size)"),
        ((pairs["safety"], out, "--target", "safety"), "differs in: input_fingerprint, target)"),
        ((pairs["style"], pairs["safety"], "--target", "style"), "holds a mapo-data generate output, not a label one"),
        ((pairs["style"], foreign, "--target", "style"), "is not a mapo-data output"),
    ]
    for args, message in cases:
        assert message in _error_line(_label(*args)), args
    assert before == {p: p.stat().st_mtime_ns for p in sorted(out.rglob("*"))}
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_bad_inputs_one_line_nothing_written(pairs, tmp_path):
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"text": ["a"], "image": [b"x"]}), other)
    strings = tmp_path / "strings.parquet"
    pq.write_table(pa.table({"caption": ["a"], "jpg_0": ["x"], "jpg_1": ["y"]}), strings)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(pairs["style"], unfinished)
    manifest = json.loads((unfinished / "manifest.json").read_text())
    (unfinished / "manifest.json").write_text(json.dumps({**manifest, "status": "partial", "completed_shards": [0]}))
    labeled = tmp_path / "labeled"
    assert _label(pairs["style"], labeled, "--target", "style").exit_code == 0
    cases = [
        ([other, "--target", "style"],
         "neither a mapo-data generate output nor Pick-a-Pic Parquet: it lacks column(s) caption, jpg_0, jpg_1"),
        ([strings, "--target", "style"], "has non-binary jpg_0, jpg_1"),
        ([tmp_path / "nope", "--target", "style"], "does not exist"),
        ([pairs["safety"], "--target", "style"], "--target style cannot label pairs made with --recipe safety"),
        ([tmp_path / "prompts.txt", "--target", "style"], "neither a folder of Parquet shards nor a .parquet file"),
        ([unfinished, "--target", "style"], "unfinished generate output (1 of 2 shards)"),
        ([labeled, "--target", "style"], "is a mapo-data label output, not pairs"),
        ([pairs["style"], "--target", "aesthetics"], "Unknown --target 'aesthetics'"),
        ([pairs["safety"], "--target", "safety", "--labeler", "laion"], "unknown labeler 'laion' for --target safety"),
        ([pairs["safety"], "--target", "safety", "--classifier-source", tmp_path / "no.onnx"],
         "NudeNet ONNX model not found"),
    ]
    (tmp_path / "prompts.txt").write_text("x\n")
    for i, (args, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        line = _error_line(_label(args[0], out, *args[1:]))
        assert message in line, line
        assert not list(out.glob("data/*")), args


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    # 24 one-pair-per-file Pick-a-Pic shards scored by NudeNet: slow enough to kill midway.
    images = [png(schematic_torso()), png(geometric_scene()), png(gray())]
    src = tmp_path / "pickapic"
    for k in range(24):
        write_pickapic(src / f"train-{k:02d}.parquet", [(f"pair {k}", images[k % 3], images[(k + 1) % 3])])
    args = ["label", "--input", src, "--target", "safety", "--batch-size", "1"]
    ref = tmp_path / "ref"
    # The reference and the rerun in-process (one process start each saved): only the killed run must be a real
    # process.
    assert run_cli(app, [*args, "--output", ref]).exit_code == 0

    out = tmp_path / "killed"
    done = kill_after_shards("mapo-data", [*args, "--output", out], out, shards=2)
    assert 2 <= done < 24, f"kill landed too late to test resume ({done} shards)"
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"
    rerun = run_cli(app, [*args, "--output", out])
    assert rerun.exit_code == 0, rerun.output
    assert f"({done} already done)" in rerun.output
    for sub in ("data", "rejects"):
        assert read_table(out, sub).equals(read_table(ref, sub))
        assert not [p for p in (out / sub).iterdir() if p.name.startswith(".")]  # no temporaries left
    assert (out / "README.md").read_text() == (ref / "README.md").read_text()
    assert json.loads((out / "manifest.json").read_text())["totals"]["kept"] == 16


def test_two_processes_under_accelerate_equal_one(pairs, tmp_path):
    args = ["label", "--input", pairs["style"], "--target", "style"]
    single = tmp_path / "single"
    assert run_cli(app, [*args, "--output", single]).exit_code == 0  # in-process: one process start saved
    multi = tmp_path / "multi"
    proc = run_accelerate("mapo-data", [*args, "--output", multi])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Two processes really ran, one shard each.
    assert proc.stdout.count("in 1 shard (0 already done)") == 2, proc.stdout
    assert read_table(multi).equals(read_table(single))
    assert json.loads((multi / "manifest.json").read_text())["completed_shards"] == [0, 1]
    assert (multi / "README.md").read_text() == (single / "README.md").read_text()


def test_help_lists_options():
    result = run_cli(app, ["label", "--help"])
    assert result.exit_code == 0
    for opt in (
        "--target", "--labeler", "--verify", "--clip-model", "--unsafe-threshold", "--min-gap", "--classifier-source"
    ):
        assert opt in result.output


@pytest.mark.parametrize("size", [(80, 64), (64, 80)])
def test_a_classifier_that_cannot_read_the_input_refuses_before_the_output_exists(tmp_path, size):
    """Issue 24 item 12: world-unsafe on 80x64 images refused, but left an empty output with status "running"."""
    from PIL import Image

    odd = png(Image.new("RGB", size, (10, 200, 10)))
    src = write_pickapic(tmp_path / "in" / "train-0.parquet", [("a red circle at the top left", odd, odd)])
    out = tmp_path / "out"
    line = _error_line(_label(src.parent, out, "--target", "safety", "--labeler", "world-unsafe"))
    assert f"judges read 64x64 px images (what shapes-sdxl draws), got {size[0]}x{size[1]}" in line
    assert not out.exists()
    # The same labeler on the world's own 64x64 images labels as before (the check only reads the first rows)
    from world.render import render, to_image
    from world.scene import Scene

    good = png(to_image(render(Scene("red", "circle", "top left"))))
    src = write_pickapic(tmp_path / "ok" / "train-0.parquet", [("a red circle at the top left", good, good)])
    assert _label(src.parent, tmp_path / "ok-out", "--target", "safety", "--labeler", "world-unsafe").exit_code == 0

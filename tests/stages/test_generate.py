"""`mapo-data generate` end to end on the built-in tiny models (real pipelines, real CLI)."""
from __future__ import annotations

import io

import pytest

from stages.cli import app
from tests.helpers import kill_after_shards, read_table, run_accelerate, run_cli, write_prompts

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["a cat on a sofa", "a red car", "  ", "", "a house by a lake", "a cat on a sofa", "an owl at night"]
FAST = ["--num-inference-steps", "2", "--resolution", "64"]


def _generate(tmp_path, name="out", prompts=PROMPTS, extra=()):
    src = write_prompts(tmp_path / "prompts.txt", prompts)
    out = tmp_path / name
    args = ["generate", "--model", "tiny-sdxl", "--prompts", src, "--output", out, *FAST, "--shard-size", "2", *extra]
    result = run_cli(app, args)
    assert result.exit_code == 0, result.output
    return out, result


def _decode(blob):
    from PIL import Image

    return Image.open(io.BytesIO(blob))


def test_style_pairs_written_as_described(tmp_path):
    out, result = _generate(tmp_path, extra=["--recipe", "style", "--style", "cartoon"])
    assert "4 pairs in 2 shards" in result.output
    files = sorted((out / "data").glob("*.parquet"))
    assert [f.name for f in files] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    table = read_table(out)
    rows = table.to_pylist()
    assert [r["caption"] for r in rows] == ["a cat on a sofa", "a red car", "a house by a lake", "an owl at night"]
    for r in rows:
        assert r["prompt_0"] == "Disney style animated image. " + r["caption"]
        assert r["prompt_1"] == r["caption"]
        assert r["seed_0"] == r["seed_1"]
        assert r["intended_chosen"] == 0 and r["recipe"] == "style" and r["style"] == "cartoon"
        assert r["width"] == r["height"] == 64 and r["num_inference_steps"] == 2
        assert r["scheduler"] == "EulerDiscreteScheduler" and r["model"] == "tiny-sdxl"
        for key in ("jpg_0", "jpg_1"):
            img = _decode(r[key])
            assert img.format == "PNG" and img.size == (64, 64)
        assert r["jpg_0"] != r["jpg_1"]  # only the style prefix differs, and it changes the image
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["completed_shards"] == [0, 1]
    assert manifest["prompts"] == {
        "source": str(tmp_path / "prompts.txt"), "count": 4, "dropped_empty": 2, "dropped_duplicates": 1
    }
    assert manifest["totals"]["pairs"] == 4


def test_shards_load_with_datasets_offline(tmp_path):
    import datasets

    out, _ = _generate(tmp_path)
    ds = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train")
    assert ds.num_rows == 4
    assert ds.features["jpg_0"].dtype == "binary"
    assert _decode(ds[0]["jpg_1"]).size == (64, 64)


@pytest.mark.parametrize(
    "model,recipe,extra",
    [
        ("tiny-sdxl", "safety", ["--negative-prompt", "nsfw"]),
        ("tiny-sdxl", "seeds", []),
        ("tiny-sd15", "style", ["--style", "pixel", "--image-format", "jpeg"]),
        ("tiny-sd15", "safety", []),
    ],
)
def test_recipes_and_models(tmp_path, model, recipe, extra):
    src = write_prompts(tmp_path / "p.txt", ["a cat", "a dog"])
    out = tmp_path / "out"
    result = run_cli(
        app, ["generate", "--model", model, "--prompts", src, "--output", out, *FAST, "--recipe", recipe, *extra]
    )
    assert result.exit_code == 0, result.output
    rows = read_table(out).to_pylist()
    assert len(rows) == 2
    for r in rows:
        assert _decode(r["jpg_0"]).size == (64, 64)
        if recipe == "safety":
            # The stored caption is the unsafe request (--safety-caption prefixed, the default).
            assert (
                r["prompt_1"] == r["caption"] and r["caption"].endswith(" " + r["prompt_0"])
                and r["prompt_0"] != r["caption"]
            )
            assert r["seed_0"] == r["seed_1"]
        if recipe == "seeds":
            assert r["prompt_0"] == r["prompt_1"] == r["caption"] and r["seed_0"] != r["seed_1"]
            assert r["intended_chosen"] is None
        if recipe == "style":
            assert r["prompt_0"].startswith("Pixel art style image.") and _decode(r["jpg_0"]).format == "JPEG"
    if "--negative-prompt" in extra:
        assert {r["negative_prompt_0"] for r in rows} == {"nsfw"} and {r["negative_prompt_1"] for r in rows} == {None}


def test_best_of_n_candidates_one_row_per_prompt(tmp_path):
    import pyarrow.parquet as pq

    from pipeline.data.prompts import text_id
    from pipeline.runtime.seeds import derive_seed

    prompts = ["a cat", "a dog", "a bird"]
    pairs, _ = _generate(
        tmp_path, "pairs", prompts, extra=["--recipe", "seeds", "--shard-size", "3", "--negative-prompt", "blurry"]
    )
    out, result = _generate(tmp_path, "best-of-4", prompts, extra=["--recipe", "seeds", "--images-per-prompt", "4",
                                                                   "--shard-size", "3", "--negative-prompt", "blurry"])
    assert "3 prompts x 4 candidates in 1 shard " in result.output
    table = read_table(out)
    names = table.column_names
    assert [c for c in names if c.startswith("jpg_")] == ["jpg_0", "jpg_1", "jpg_2", "jpg_3"]
    assert {f"seed_{i}" for i in range(4)} | {f"prompt_{i}" for i in range(4)} <= set(names)
    for r in table.to_pylist():
        # Candidate i's seed derives from (seed, prompt id, i), as a pair's image i does.
        assert [r[f"seed_{i}"] for i in range(4)] == [derive_seed(0, text_id(r["caption"]), i) for i in range(4)]
        assert {r[f"prompt_{i}"] for i in range(4)} == {r["caption"]} and r["intended_chosen"] is None
        assert {r[f"negative_prompt_{i}"] for i in range(4)} == {"blurry"}
        assert len({r[f"jpg_{i}"] for i in range(4)}) == 4
    # Candidates are the seeds recipe's images with more seeds: image 0 is the pair's image 0 (its image 1
    # has no negative prompt, --rejected-negative-prompt, so only its seed is the same).
    two = read_table(pairs)
    assert not [c for c in two.column_names if c.endswith(("_2", "_3"))]
    assert two["jpg_0"].equals(table["jpg_0"]) and two["seed_1"].equals(table["seed_1"])
    manifest = __import__("json").loads((out / "manifest.json").read_text())
    assert manifest["identity"]["images_per_prompt"] == 4 and manifest["totals"]["images"] == 12
    assert "images_per_prompt" not in __import__("json").loads((pairs / "manifest.json").read_text())["identity"]
    # Written in row groups of a few prompts: label holds a few prompts' candidates at a time.
    from stages.generate import ROW_GROUP_ROWS

    assert pq.ParquetFile(next((out / "data").glob("*.parquet"))).metadata.row_group(0).num_rows <= ROW_GROUP_ROWS


def test_bit_identical_across_runs_and_batch_sizes(tmp_path):
    # 7 prompts in one shard: batch size 3 runs batches of 3, 3 and a ragged 1.
    prompts = [f"a small scene number {i}" for i in range(7)]
    a, _ = _generate(tmp_path, "a", prompts, extra=["--batch-size", "1", "--shard-size", "7"])
    b, _ = _generate(tmp_path, "b", prompts, extra=["--batch-size", "3", "--shard-size", "7"])
    c, _ = _generate(tmp_path, "c", prompts, extra=["--batch-size", "3", "--shard-size", "7"])
    assert len(list((b / "data").glob("*.parquet"))) == 1  # the later --shard-size 7 wins: one shard of 7
    ta, tb, tc = read_table(a), read_table(b), read_table(c)
    assert ta.equals(tb) and tb.equals(tc)


def test_rerun_skips_finished_shards(tmp_path):
    out, _ = _generate(tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "data").iterdir()}
    _, result = _generate(tmp_path)
    assert "nothing to do: " in result.output and "all 2 shards" in result.output
    assert before == {p.name: p.stat().st_mtime_ns for p in (out / "data").iterdir()}


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    prompts = [f"prompt number {i}" for i in range(12)]
    src = write_prompts(tmp_path / "p.txt", prompts)
    args = ["generate", "--model", "tiny-sdxl", "--prompts", src, *FAST, "--shard-size", "2", "--batch-size", "1"]
    ref = tmp_path / "ref"
    # The reference and the rerun in-process (one process start each saved; the same one torch thread as the
    # killed CLI, which inherits OMP_NUM_THREADS=1): only the killed run must be a real process.
    assert run_cli(app, [*args, "--output", ref]).exit_code == 0

    out = tmp_path / "killed"
    done = kill_after_shards("mapo-data", [*args, "--output", out], out, shards=2)
    assert 2 <= done < 6, f"kill landed too late to test resume ({done} shards)"
    rerun = run_cli(app, [*args, "--output", out])
    assert rerun.exit_code == 0, rerun.output
    assert f"({done} already done)" in rerun.output
    assert read_table(out).equals(read_table(ref))
    assert not [p for p in (out / "data").iterdir() if p.name.startswith(".")]  # no temporaries left


def test_two_processes_under_accelerate_equal_one(tmp_path):
    prompts = [f"a scene number {i}" for i in range(5)]
    src = write_prompts(tmp_path / "p.txt", prompts)
    args = ["generate", "--model", "tiny-sdxl", "--prompts", str(src), *FAST, "--shard-size", "2"]
    single = tmp_path / "single"
    assert run_cli(app, [*args, "--output", single]).exit_code == 0  # in-process, one torch thread like each worker
    multi = tmp_path / "multi"
    proc = run_accelerate("mapo-data", [*args, "--output", multi])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Both processes really ran and split the 3 shards between them (0 and 2 / 1).
    assert (
        "process 0/2: 3 pairs in 2 shards" in proc.stdout and "process 1/2: 2 pairs in 1 shard " in proc.stdout
    ), proc.stdout
    assert read_table(multi).equals(read_table(single))
    import json

    assert json.loads((multi / "manifest.json").read_text())["completed_shards"] == [0, 1, 2]


@pytest.mark.parametrize(
    "case,args,message",
    [
        ("missing file", ["--prompts", "{tmp}/nope.txt"], "does not exist"),
        ("empty file", ["--prompts", "{tmp}/empty.txt"], "No usable prompt"),
        ("unknown recipe", ["--recipe", "nope"], "Unknown --recipe 'nope'"),
        ("unknown model", ["--model", "no-such-org/no-such-model"], "was not found"),
        ("missing local model", ["--model", "{tmp}/no_model_here"], "was not found"),
        ("fp16 on cpu", ["--dtype", "fp16"], "fp16 is not supported on the CPU"),
        ("empty prefix", ["--recipe", "safety", "--unsafe-prefix", " "], "--unsafe-prefix must not be empty"),
        ("one candidate", ["--recipe", "seeds", "--images-per-prompt", "1"],
         "--images-per-prompt must be at least 2, got 1"),
        ("candidates of a style pair", ["--recipe", "style", "--images-per-prompt", "4"],
         "--images-per-prompt 4 needs --recipe seeds"),
        ("t5 length on sdxl", ["--max-sequence-length", "8"], "--max-sequence-length applies only to models with a T5"),
        ("zero t5 length", ["--model", "tiny-sd3", "--max-sequence-length", "0"], "--max-sequence-length must be"),
    ],
)
def test_bad_input_one_line_error_nothing_written(tmp_path, case, args, message):
    write_prompts(tmp_path / "ok.txt", ["a cat"])
    (tmp_path / "empty.txt").write_text("\n  \n\n")
    base = {"--prompts": str(tmp_path / "ok.txt"), "--model": "tiny-sdxl"}
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    for flag, value in base.items():
        if flag not in args:
            args = [flag, value, *args]
    out = tmp_path / "out"
    result = run_cli(app, ["generate", *args, "--output", out, *FAST])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert not out.exists()  # nothing written: not even a manifest that a corrected rerun would trip over


def test_other_config_refused_then_overwrite(tmp_path):
    out, _ = _generate(tmp_path)
    table_before = read_table(out)
    result = run_cli(app, ["generate", "--model", "tiny-sdxl", "--prompts", tmp_path / "prompts.txt", "--output", out,
                           *FAST, "--shard-size", "2", "--seed", "7"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "differs in: seed" in lines[0], result.output
    assert read_table(out).equals(table_before)  # refused: nothing touched
    result = run_cli(app, ["generate", "--model", "tiny-sdxl", "--prompts", tmp_path / "prompts.txt", "--output", out,
                           *FAST, "--shard-size", "2", "--seed", "7", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not read_table(out).equals(table_before)


def test_help_lists_stage_options():
    result = run_cli(app, ["generate", "--help"])
    assert result.exit_code == 0
    for opt in ("--recipe", "--style", "--batch-size", "--shard-size", "--image-format", "--overwrite", "--vae"):
        assert opt in result.output


def test_resolution_defaults_to_the_models_own(tmp_path):
    """No --resolution: the model's own size as diffusers defaults it (sample_size x VAE factor: 64 here)."""
    import pyarrow.parquet as pq

    from pipeline.models.loading import default_resolution

    assert default_resolution("tiny-sdxl") == 64 and default_resolution("sdxl-arch") == 1024
    prompts = write_prompts(tmp_path / "p.txt", ["a cat"])
    result = run_cli(app, ["generate", "--prompts", prompts, "--output", tmp_path / "out", "--model", "tiny-sdxl",
                           "--num-inference-steps", "1"])
    assert result.exit_code == 0, result.output
    table = pq.read_table(next((tmp_path / "out" / "data").glob("*.parquet")), columns=["width", "height"])
    assert table.column("width").to_pylist() == [64] and table.column("height").to_pylist() == [64]


def test_compile_generates_the_eager_images(tmp_path):
    """--compile (regional torch.compile, shared with mapo-train) really compiles the UNet's blocks and draws the
    same images as eager generation, up to the fused kernels' float reordering (8-bit pixels: a few levels)."""
    import numpy as np
    import torch._dynamo

    prompts = ["a cat on a sofa", "a red car"]
    eager, _ = _generate(tmp_path, "eager", prompts)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled, _ = _generate(tmp_path, "compiled", prompts, extra=["--compile"])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    torch._dynamo.reset()
    te, tc = read_table(eager), read_table(compiled)
    assert te.column("caption").to_pylist() == tc.column("caption").to_pylist()
    for col in ("jpg_0", "jpg_1"):
        for a, b in zip(te.column(col).to_pylist(), tc.column(col).to_pylist()):
            diff = np.abs(np.asarray(_decode(a), dtype=np.int16) - np.asarray(_decode(b), dtype=np.int16))
            assert diff.max() <= 4, diff.max()
    # Not the same bytes: a compiled run does not resume into an eager one's output (nor the other way).
    src = tmp_path / "prompts.txt"
    result = run_cli(app, ["generate", "--model", "tiny-sdxl", "--prompts", src, "--output", eager, *FAST,
                           "--shard-size", "2", "--compile"])
    assert result.exit_code == 2 and "compile" in result.output, result.output

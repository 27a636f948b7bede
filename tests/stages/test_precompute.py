"""`mapo-data precompute` end to end on the built-in tiny models (real VAE, real text encoders, real CLI)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data.image_prep import prepare_pair
from pipeline.data.images import decode_image
from pipeline.data.latent_shards import check_model, open_latents
from pipeline.data.prompts import text_id
from pipeline.errors import UserError
from stages.cli import app
from tests.helpers import kill_after_shards, read_table, run_accelerate, run_cli, write_prompts

RES = ["--resolution", "64"]


def png(w: int, h: int, seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


# (caption, jpg_0, jpg_1, label_0, label_1) over two input shards: ties, label_0 == 0 rows, mixed
# sizes, one corrupt image, captions repeated within and across shards.
PICK_ROWS = [
    [("a cat", (64, 64, 1), (80, 64, 2), 1, 0),
     ("a dog", (64, 64, 3), (64, 96, 4), 0, 1),
     ("a cat", (64, 64, 5), (64, 64, 6), 0.5, 0.5),
     ("a cat", (64, 64, 7), None, 1, 0)],
    [("a bird", (96, 72, 8), (96, 72, 9), 0, 1),
     ("a dog", (72, 64, 10), (64, 64, 11), 1, 0),
     ("a cat", (64, 64, 12), (64, 64, 13), 1, 0)],
]
EXPECTED_CHOSEN = [(0, "jpg_0"), (1, "jpg_1"), (4, "jpg_1"), (5, "jpg_0"), (6, "jpg_0")]  # (flat row, column)


def write_pick_file(folder: Path, shards=PICK_ROWS) -> list[dict]:
    """A hand-made Pick-a-Pic-format input folder (data/train-*.parquet); returns the flat rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "data").mkdir(parents=True, exist_ok=True)
    flat = []
    for k, rows in enumerate(shards):
        recs = [{"caption": c, "jpg_0": png(*a), "jpg_1": png(*b) if b else b"\x89PNG not really",
                 "label_0": l0, "label_1": l1} for c, a, b, l0, l1 in rows]
        flat += recs
        table = pa.table({"caption": [r["caption"] for r in recs],
                          "jpg_0": pa.array([r["jpg_0"] for r in recs], pa.binary()),
                          "jpg_1": pa.array([r["jpg_1"] for r in recs], pa.binary()),
                          "label_0": pa.array([r["label_0"] for r in recs], pa.float64()),
                          "label_1": pa.array([r["label_1"] for r in recs], pa.float64())})
        pq.write_table(table, folder / "data" / f"train-{k:05d}-of-{len(shards):05d}.parquet")
    return flat


def precompute(tmp_path, model="tiny-sdxl", name="latents", extra=(), source=None):
    src = source or tmp_path / "pick"
    if source is None and not src.exists():
        write_pick_file(src)
    out = tmp_path / name
    result = run_cli(
        app, ["precompute", "--input", src, "--output", out, "--model", model, *RES, "--batch-size", "2", *extra]
    )
    assert result.exit_code == 0, result.output
    return out, result


@pytest.fixture(scope="module")
def sdxl_pipe():
    from pipeline.models.loading import load_pipeline

    return load_pipeline("tiny-sdxl", skip=("unet",))


def test_sdxl_shards_as_training_would_compute_them(tmp_path, sdxl_pipe):
    from pipeline.models.conditioning import encode_text

    out, result = precompute(tmp_path)
    assert "5 pairs in 2 shards (0 already done), 1 tie dropped, 1 rejected, 3 captions encoded" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    info = manifest["latents"]
    assert manifest["status"] == "complete" and info["family"] == "sdxl" and info["latent_shape"] == [4, 8, 8]
    assert info["storage_dtype"] == "fp16" and info["model"] == "tiny-sdxl" and info["resolution"] == 64
    assert set(info["components"]) == {"vae", "text_encoders"} and len(info["components"]["text_encoders"]) == 2
    assert manifest["totals"]["ties"] == 1 and manifest["totals"]["rejects"] == 1
    rejects = read_table(out, "rejects").to_pylist()
    assert (
        len(rejects) == 1 and rejects[0]["source_row"] == 3
        and rejects[0]["reason"].startswith("jpg_1: undecodable image")
    )

    ds = open_latents(out)
    assert len(ds) == 5 and ds.family == "sdxl"
    # Each distinct caption stored once in the whole output (the first shard that uses it).
    assert sum(len(json.loads(p.read_text())["caption_ids"]) for p in (out / "data").glob("*.captions.json")) == 3
    assert ds.caption_ids.count(text_id("a cat")) == 2

    flat = [r for shard in PICK_ROWS for r in shard]
    pipe = sdxl_pipe
    raw = [dict(zip(("caption", "jpg_0", "jpg_1"), (r[0], png(*r[1]), png(*r[2]) if r[2] else None))) for r in flat]
    for i, (row, chosen_col) in enumerate(EXPECTED_CHOSEN):
        item = ds[i]
        assert item["latents"].shape == (2, 4, 8, 8) and item["latents"].dtype == torch.float16
        assert item["prompt_embeds"].shape == (77, 64) and item["prompt_embeds"].dtype == torch.float16
        assert item["pooled_prompt_embeds"].shape == (32,) and item["add_time_ids"].dtype == torch.float32
        assert item["caption_id"] == text_id(raw[row]["caption"])
        # What a training step would compute from the raw images: chosen first.
        other = "jpg_1" if chosen_col == "jpg_0" else "jpg_0"
        chosen, rejected = decode_image(raw[row][chosen_col]), decode_image(raw[row][other])
        prepared = prepare_pair(chosen, rejected, 64)
        assert item["add_time_ids"].tolist() == list(map(float, prepared.time_ids()))
        with torch.no_grad():
            mean = pipe.vae.encode(prepared.pixels[0]).latent_dist.mean
            expected = mean * pipe.vae.config.scaling_factor
            assert torch.allclose(item["latents"].float(), expected, rtol=2e-3, atol=2e-3)
            # Decoding the stored latent gives what decoding the training-step latent gives.
            decoded = pipe.vae.decode(item["latents"].float() / pipe.vae.config.scaling_factor).sample
            assert torch.allclose(decoded, pipe.vae.decode(mean).sample, atol=1e-2)
        emb = encode_text(pipe, [raw[row]["caption"]])
        assert torch.allclose(item["prompt_embeds"].float(), emb.prompt_embeds[0], rtol=2e-3, atol=2e-3)
        assert torch.allclose(item["pooled_prompt_embeds"].float(), emb.pooled[0], rtol=2e-3, atol=2e-3)
    assert ds[1]["add_time_ids"].tolist() == [96, 64, 16, 0, 64, 64]  # chosen jpg_1 is 64 wide, 96 high

    # The trainer's model check: the same model passes (in another precision too), another is refused.
    check_model(ds, vae=pipe.vae, text_encoders=[pipe.text_encoder, pipe.text_encoder_2])
    from pipeline.models.loading import load_pipeline

    bf16 = load_pipeline("tiny-sdxl", skip=("unet",), dtype="bf16")
    check_model(str(out), vae=bf16.vae, text_encoders=[bf16.text_encoder, bf16.text_encoder_2])
    sd15 = load_pipeline("tiny-sd15", skip=("unet",))
    with pytest.raises(UserError, match="made by model 'tiny-sdxl'.*1"):
        check_model(ds, vae=sd15.vae, text_encoders=[sd15.text_encoder])
    with pytest.raises(UserError, match="VAE"):
        check_model(ds, vae=sd15.vae)
    with torch.no_grad():  # same config, slightly different weights (a fine-tune): refused
        for p in bf16.text_encoder_2.parameters():
            p.mul_(1.01)
    with pytest.raises(UserError, match="text encoder 2"):
        check_model(ds, text_encoders=[bf16.text_encoder, bf16.text_encoder_2])


def test_sd15_bf16_flips_and_stats(tmp_path):
    from pipeline.models.loading import load_pipeline

    out, result = precompute(
        tmp_path, model="tiny-sd15", extra=["--storage-dtype", "bf16", "--flip", "both", "--latent-stats"]
    )
    ds = open_latents(out)
    assert ds.family == "sd15" and len(ds) == 5 and ds.has_flips and ds.has_logvar
    item = ds[0]
    assert "pooled_prompt_embeds" not in item and "add_time_ids" not in item
    assert item["latents"].dtype == torch.bfloat16 and item["prompt_embeds"].shape == (77, 32)
    flipped = ds[(0, True)]
    assert flipped["flip"] and not torch.equal(flipped["latents"], item["latents"])
    pipe = load_pipeline("tiny-sd15", skip=("unet",))
    chosen, rejected = decode_image(png(64, 64, 1)), decode_image(png(80, 64, 2))
    prepared = prepare_pair(chosen, rejected, 64, flips=True)
    with torch.no_grad():
        dist = pipe.vae.encode(prepared.pixels[1]).latent_dist
    scale = pipe.vae.config.scaling_factor
    assert torch.allclose(flipped["latents"].float(), dist.mean * scale, rtol=2e-2, atol=2e-2)
    assert torch.allclose(flipped["latents_logvar"].float(), dist.logvar + 2 * np.log(scale), rtol=2e-2, atol=5e-2)


def test_random_crop_seeded(tmp_path):
    wide = [[("a wide scene", (200, 64, 1), (200, 64, 2), 1, 0)]]
    write_pick_file(tmp_path / "pick", wide)
    a, _ = precompute(tmp_path, name="a", extra=["--crop", "random", "--seed", "1"])
    b, _ = precompute(tmp_path, name="b", extra=["--crop", "random", "--seed", "1"])
    ids_a = open_latents(a)[0]["add_time_ids"].tolist()
    assert ids_a == open_latents(b)[0]["add_time_ids"].tolist()
    assert ids_a[:3] == [64, 200, 0] and 0 <= ids_a[3] <= 136


def test_generate_output_plus_labels(tmp_path):
    """The chain without the label stage: generate, add Pick-a-Pic labels by hand, precompute."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    prompts = write_prompts(tmp_path / "p.txt", ["a cat", "a red car", "a cat in a hat"])
    pairs = tmp_path / "pairs"
    result = run_cli(app, ["generate", "--model", "tiny-sdxl", "--prompts", prompts, "--output", pairs,
                           "--num-inference-steps", "1", "--resolution", "64"])
    assert result.exit_code == 0, result.output
    table = read_table(pairs)
    labels = [(0, 1), (1, 0), (1, 1)]  # the last is a tie
    table = table.append_column("label_0", pa.array([a for a, _ in labels], pa.int64()))
    table = table.append_column("label_1", pa.array([b for _, b in labels], pa.int64()))
    (tmp_path / "labeled" / "data").mkdir(parents=True)
    pq.write_table(table, tmp_path / "labeled" / "data" / "train-00000-of-00001.parquet")
    out, result = precompute(tmp_path, source=tmp_path / "labeled")
    assert "2 pairs in 1 shard " in result.output and "1 tie dropped" in result.output
    ds = open_latents(out)
    assert ds.pair_ids == table.column("pair_id").to_pylist()[:2]  # generate's pair ids are kept
    rows = read_table(out).to_pylist()
    assert [r["chosen"] for r in rows] == [1, 0]


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    shards = [[(f"prompt {k} {j}", (64, 64, 10 * k + j), (64, 72, 100 + 10 * k + j), 1, 0) for j in range(2)]
              for k in range(12)]
    write_pick_file(tmp_path / "pick", shards)
    ref, _ = precompute(tmp_path, name="ref")
    args = ["precompute", "--input", tmp_path / "pick", "--model", "tiny-sdxl", *RES, "--batch-size", "2"]
    out = tmp_path / "killed"
    done = kill_after_shards("mapo-data", [*args, "--output", out], out, shards=1)
    assert 1 <= done < 12, f"kill landed too late to test resume ({done} shards)"
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"
    with pytest.raises(UserError, match="rerun"):
        open_latents(out)
    rerun = run_cli(app, [*args, "--output", out])  # in-process, like the reference: same thread count
    assert rerun.exit_code == 0, rerun.output
    assert f"({done} already done)" in rerun.output
    a, b = open_latents(ref), open_latents(out)
    assert len(a) == len(b) == 24 and a.pair_ids == b.pair_ids
    for i in range(24):
        x, y = a[i], b[i]
        assert torch.equal(x["latents"], y["latents"]) and torch.equal(x["prompt_embeds"], y["prompt_embeds"])
    for p in sorted((ref / "data").iterdir()):
        assert p.read_bytes() == (out / "data" / p.name).read_bytes(), p.name
    assert not [p for p in (out / "data").iterdir() if p.name.startswith(".")]


def test_two_processes_under_accelerate_equal_one(tmp_path):
    shards = [[(f"scene {k}", (64, 64, k), (64, 64, 50 + k), 0, 1),
               ("shared caption", (64, 80, 9 + k), (64, 64, 3), 1, 0)]
              for k in range(3)]
    write_pick_file(tmp_path / "pick", shards)
    single, _ = precompute(tmp_path, name="single")
    args = ["precompute", "--input", str(tmp_path / "pick"), "--model", "tiny-sdxl", *RES, "--batch-size", "2"]
    multi = tmp_path / "multi"
    proc = run_accelerate("mapo-data", [*args, "--output", multi])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Two processes really ran: shards 0 and 2 on rank 0, shard 1 on rank 1.
    assert "in 2 shards (0 already done)" in proc.stdout and "in 1 shard (0 already done)" in proc.stdout, proc.stdout
    manifest = json.loads((multi / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["totals"]["captions_encoded"] == 4
    assert read_table(multi).equals(read_table(single))
    # Workers run one CPU thread each, which changes kernels' last bits: equal to fp16 tolerance.
    a, b = open_latents(single), open_latents(multi)
    assert a.caption_ids == b.caption_ids and len(a) == 6
    for i in range(6):
        for key in ("latents", "prompt_embeds", "pooled_prompt_embeds", "add_time_ids"):
            assert torch.allclose(a[i][key].float(), b[i][key].float(), rtol=1e-2, atol=1e-3), key


def test_rerun_skips_and_other_config_refused(tmp_path):
    out, _ = precompute(tmp_path)
    _, result = precompute(tmp_path)
    assert "nothing to do" in result.output
    result = run_cli(app, ["precompute", "--input", tmp_path / "pick", "--output", out, "--model", "tiny-sdxl", *RES,
                           "--storage-dtype", "bf16"])
    assert result.exit_code == 2 and "differs in: storage_dtype" in result.output


@pytest.mark.parametrize(
    "case,args,message",
    [
        ("missing input", ["--input", "{tmp}/nope"], "does not exist"),
        ("raw image shards", ["--input", "{tmp}/raw"], "lacks column(s) label_0, label_1"),
        ("empty folder", ["--input", "{tmp}/empty"], "No Parquet files"),
        ("bad flip", ["--flip", "sideways"], "Unknown --flip 'sideways'"),
        ("bad storage", ["--storage-dtype", "fp8"], "Unknown --storage-dtype 'fp8'"),
        ("bad resolution", ["--resolution", "65"], "multiple of 8"),
        ("unknown model", ["--model", "no-such-org/no-such-model"], "was not found"),
        ("no-t5 on sdxl", ["--no-t5", "--max-sequence-length", "8"], "--no-t5 and --max-sequence-length apply only"),
        ("t5 length on sd15", ["--model", "tiny-sd15", "--max-sequence-length", "8"], "'tiny-sd15' is sd15"),
        ("unpaired label 2", ["--input", "{tmp}/unpaired-2"], "column label holds 2 (row 1)"),
        ("unpaired null label", ["--input", "{tmp}/unpaired-null"], "column label holds None (row 0)"),
        ("unpaired no label", ["--input", "{tmp}/unpaired-nolabel"], "lacks column(s) label: unpaired examples"),
    ],
)
def test_bad_input_one_line_error(tmp_path, case, args, message):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_pick_file(tmp_path / "pick", PICK_ROWS[:1])
    (tmp_path / "raw" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"caption": ["x"], "jpg_0": [b""], "jpg_1": [b""]}),
                   tmp_path / "raw" / "data" / "train-00000-of-00001.parquet")
    (tmp_path / "empty").mkdir()
    for name, labels in {"unpaired-2": [1, 2], "unpaired-null": [None, 1], "unpaired-nolabel": None}.items():
        cols = {"caption": ["x", "y"], "jpg": [png(8, 8, 0)] * 2, **({"label": labels} if labels else {})}
        (tmp_path / name).mkdir()
        pq.write_table(pa.table(cols), tmp_path / name / "train-00000-of-00001.parquet")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    base = {"--input": str(tmp_path / "pick"), "--model": "tiny-sdxl", "--resolution": "64"}
    for flag, value in base.items():
        if flag not in args:
            args = [flag, value, *args]
    out = tmp_path / "out"
    result = run_cli(app, ["precompute", *args, "--output", out])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert not list(out.glob("data/*.parquet"))


def test_open_latents_refuses_other_folders(tmp_path):
    write_pick_file(tmp_path / "pick", PICK_ROWS[:1])
    with pytest.raises(UserError, match="run `mapo-data precompute"):
        open_latents(tmp_path / "pick")
    with pytest.raises(UserError, match="does not exist"):
        open_latents(tmp_path / "nothing")


def test_override_vae_recorded_and_checked(tmp_path):
    from pipeline.models.builtin import materialise_tiny
    from pipeline.models.loading import load_pipeline

    other_vae = materialise_tiny("tiny-sd15") / "vae"
    write_pick_file(tmp_path / "pick", PICK_ROWS[1:])
    out, _ = precompute(tmp_path, extra=["--vae", str(other_vae)])
    ds = open_latents(out)
    assert ds.manifest["latents"]["vae"] == str(other_vae)
    pipe = load_pipeline("tiny-sdxl", skip=("unet",))
    with pytest.raises(UserError, match="with VAE .*whose VAE"):
        check_model(ds, vae=pipe.vae, text_encoders=[pipe.text_encoder, pipe.text_encoder_2])
    pipe = load_pipeline("tiny-sdxl", vae=str(other_vae), skip=("unet",))
    check_model(ds, vae=pipe.vae, text_encoders=[pipe.text_encoder, pipe.text_encoder_2])


def test_overlapping_output_and_extreme_aspect(tmp_path):
    """--output holding the input is refused (its --overwrite would delete the input); a 8x512 strip is a reject."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    def png(w, h):
        buf = io.BytesIO()
        Image.new("RGB", (w, h), (120, 30, 200)).save(buf, format="PNG")
        return buf.getvalue()

    pick = tmp_path / "pick"
    (pick / "data").mkdir(parents=True)
    pq.write_table(pa.table({"caption": ["ok", "strip"], "jpg_0": [png(64, 64), png(8, 512)],
                             "jpg_1": [png(64, 72), png(64, 64)], "label_0": [1, 1], "label_1": [0, 0]}),
                   pick / "data" / "train-00000-of-00001.parquet")
    result = run_cli(
        app, ["precompute", "--input", pick, "--output", pick, "--model", "tiny-sdxl", *RES, "--overwrite"]
    )
    assert result.exit_code == 2 and "holds the input file" in result.output
    assert (pick / "data" / "train-00000-of-00001.parquet").exists()
    out = tmp_path / "lat"
    result = run_cli(app, ["precompute", "--input", pick, "--output", out, "--model", "tiny-sdxl", *RES])
    assert result.exit_code == 0, result.output
    rejects = read_table(out, "rejects").to_pylist()
    assert [r["reason"] for r in rejects] == ["jpg_0: extreme aspect ratio (8x512)"]


def test_only_the_train_split_of_a_multi_split_folder(tmp_path):
    """A Pick-a-Pic snapshot folder holds train/validation/test shards: only train is read."""
    from pipeline.data.shards import input_shard_files

    (tmp_path / "data").mkdir()
    for name in ("train-00000-of-00002", "train-00001-of-00002", "validation-00000-of-00001", "test-00000-of-00001"):
        (tmp_path / "data" / f"{name}.parquet").write_bytes(b"")
    assert [f.name for f in input_shard_files(tmp_path)] == [
        "train-00000-of-00002.parquet", "train-00001-of-00002.parquet"
    ]
    assert [f.name for f in input_shard_files(tmp_path, split="test")] == ["test-00000-of-00001.parquet"]
    assert len(input_shard_files(str(tmp_path / "data" / "*.parquet"))) == 4  # a glob is taken as given


@pytest.mark.parametrize("storage, kept", [("fp16", False), ("bf16", True)])
def test_latents_beyond_the_storage_range_are_rejected_not_stored_as_inf(tmp_path, monkeypatch, storage, kept):
    import stages.precompute.encode as precompute_mod

    real = precompute_mod._encode_latents

    def huge_first(vae, pairs, views):  # finite in fp32, beyond fp16's 65504 (bf16 holds it)
        mean, logvar = real(vae, pairs, views)
        mean[0] = 1e6
        return mean, logvar

    monkeypatch.setattr(precompute_mod, "_encode_latents", huge_first)
    out, result = precompute(tmp_path, extra=("--storage-dtype", storage, "--batch-size", "64"))
    rejects = read_table(out, "rejects").to_pylist() if (out / "rejects").exists() else []
    reasons = [r["reason"] for r in rejects]
    assert ("latents beyond the fp16 storage range (use --storage-dtype bf16)" in reasons) is not kept, reasons
    latents = open_latents(out)
    for i in range(len(latents)):
        assert np.isfinite(latents[i]["latents"].float().numpy()).all()


@pytest.mark.parametrize("columns, read_as, other", [
    (["caption", "jpg_0", "jpg_1"], "preference pairs", "unpaired examples"),
    (["caption", "jpg"], "unpaired examples", "preference pairs"),
])
def test_missing_columns_is_one_message_for_either_shape(tmp_path, columns, read_as, other):
    """The same sentence for both shapes: which shape the file was read as and its columns, then the other's."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stages.precompute.inputs import PAIRS, UNPAIRED, check_columns, input_shape

    f = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.table({c: [b"x"] for c in columns}), f)
    shape = input_shape([f])
    with pytest.raises(UserError) as caught:
        check_columns([f], shape)
    need = {s.name: ", ".join(s.columns) for s in (PAIRS, UNPAIRED)}
    mine, theirs = (need["pairs"], need["unpaired"]) if shape is PAIRS else (need["unpaired"], need["pairs"])
    missing = ", ".join(c for c in shape.columns if c not in columns)
    message = str(caught.value)
    assert message.startswith(f"{f} lacks column(s) {missing}: ") and "\n" not in message
    head, tail = message.split("; ")
    assert read_as in head and head.endswith(f"need {mine}") and other in tail and f"need {theirs}" in tail


def test_captions_of_rejected_pairs_only_are_not_encoded(tmp_path):
    """A caption whose every pair is rejected (an image missing or corrupt) gets no embedding; one whose first
    pair is rejected but whose later pair (another shard) is kept is still encoded, by the shard that owns it."""
    shards = [[("a fox", (64, 64, 1), None, 1, 0), ("an owl", (64, 64, 2), None, 1, 0),
               ("a cat", (64, 64, 3), (64, 64, 4), 1, 0)],
              [("an owl", (64, 64, 5), (64, 64, 6), 0, 1)]]
    write_pick_file(tmp_path / "pick", shards)
    out, result = precompute(tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["captions_encoded"] == 2 and manifest["totals"]["rejects"] == 2, manifest["totals"]
    stored = [json.loads(f.read_text())["captions"] for f in sorted((out / "data").glob("*.captions.json"))]
    assert stored == [["an owl", "a cat"], []]
    ds = open_latents(out)
    assert sorted(ds[i]["caption_id"] for i in range(len(ds))) == sorted(text_id(c) for c in ("a cat", "an owl"))
    assert all(ds[i]["prompt_embeds"].abs().sum() > 0 for i in range(len(ds)))

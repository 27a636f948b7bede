"""Image column layouts: every stage that reads pair images takes raw bytes and the ``datasets``
Image struct ``{bytes, path}`` alike (a path relative to the Parquet file included), and decodes
them with the one normalising decoder."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.data.images import ImageDecodeError, image_bytes, is_image_column
from stages.cli import app
from tests.helpers import read_table, run_cli
from tests.image_fixtures import geometric_scene, png, schematic_torso

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _noise_png(seed: int, w: int = 64, h: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def write_layout(path, captions, images, layout, labels=None):
    """A Pick-a-Pic-like Parquet file whose jpg_0/jpg_1 are stored in ``layout``:
    'bytes' (plain binary), 'datasets' (what ``Dataset.to_parquet``/``push_to_hub`` write for an
    ``Image()`` feature), 'relative' / 'absolute' (structs with null bytes and a path to a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = {"caption": captions}
    if labels is not None:
        cols["label_0"], cols["label_1"] = [float(a) for a, _ in labels], [float(b) for _, b in labels]
    if layout == "datasets":
        import datasets

        feats = {"caption": datasets.Value("string"), "jpg_0": datasets.Image(decode=False),
                 "jpg_1": datasets.Image(decode=False)}
        if labels is not None:
            feats.update(label_0=datasets.Value("float64"), label_1=datasets.Value("float64"))
        cols.update({f"jpg_{i}": [{"bytes": p[i], "path": None} for p in images] for i in (0, 1)})
        datasets.Dataset.from_dict(cols, features=datasets.Features(feats)).to_parquet(str(path))
        assert pq.read_schema(path).field("jpg_0").type == IMAGE_STRUCT  # the layout this test is about
        return path
    for i in (0, 1):
        if layout == "bytes":
            cols[f"jpg_{i}"] = pa.array([p[i] for p in images], pa.binary())
            continue
        cells = []
        for n, p in enumerate(images):
            name = f"images/{n}-{i}.png"
            if p[i] is not None:
                (path.parent / "images").mkdir(exist_ok=True)
                (path.parent / name).write_bytes(p[i])
            cells.append({"bytes": None, "path": name if layout == "relative" else str(path.parent / name)})
        cols[f"jpg_{i}"] = pa.array(cells, IMAGE_STRUCT)
    pq.write_table(pa.table(cols), path)
    return path


# -- the shared pieces ---------------------------------------------------------------------------
def test_image_column_types():
    assert is_image_column(pa.binary()) and is_image_column(pa.large_binary()) and is_image_column(IMAGE_STRUCT)
    assert not is_image_column(pa.string()) and not is_image_column(pa.struct([("path", pa.string())]))


def test_image_bytes_of_each_layout(tmp_path):
    blob = _noise_png(0)
    (tmp_path / "a.png").write_bytes(blob)
    assert image_bytes(blob) == blob and image_bytes(None) is None
    assert image_bytes({"bytes": blob, "path": "elsewhere.png"}) == blob  # bytes win, as in datasets
    assert image_bytes({"bytes": None, "path": "a.png"}, tmp_path) == blob
    assert image_bytes({"bytes": None, "path": str(tmp_path / "a.png")}) == blob
    with pytest.raises(ImageDecodeError, match="image file not readable"):
        image_bytes({"bytes": None, "path": "gone.png"}, tmp_path)


# -- label ---------------------------------------------------------------------------------------
SAFETY_PAIRS = [("nude first", 0), ("nude second", 1)]


def _safety_images():
    torso, safe = png(schematic_torso()), png(geometric_scene())
    return [(torso, safe), (safe, torso)]


@pytest.mark.parametrize("layout", ["datasets", "relative", "absolute"])
def test_label_reads_image_structs(tmp_path, layout):
    images = _safety_images()
    src = write_layout(tmp_path / "in" / "train-0.parquet", [c for c, _ in SAFETY_PAIRS], images, layout)
    out = tmp_path / "out"
    result = run_cli(app, ["label", "--input", src.parent, "--output", out, "--target", "safety"])
    assert result.exit_code == 0, result.output
    kept = read_table(out)
    assert kept["caption"].to_pylist() == ["nude first", "nude second"]
    assert kept["label_0"].to_pylist() == [0, 1]  # the safe image is chosen
    # Written as plain bytes (what Pick-a-Pic and the MaPO loaders read), equal to the input images.
    assert kept.schema.field("jpg_0").type == pa.binary()
    assert kept["jpg_0"].to_pylist() == [p[0] for p in images] and kept["jpg_1"].to_pylist() == [p[1] for p in images]
    import datasets

    ds = datasets.load_dataset(str(out), split="train")
    assert isinstance(ds[0]["jpg_0"], bytes) and ds[0]["jpg_0"] == images[0][0]


def test_label_struct_with_missing_file_is_a_counted_reject(tmp_path):
    images = _safety_images()
    src = write_layout(tmp_path / "in" / "train-0.parquet", ["gone", "nude second"], images, "relative")
    (src.parent / "images" / "0-0.png").unlink()
    out = tmp_path / "out"
    result = run_cli(app, ["label", "--input", src.parent, "--output", out, "--target", "safety"])
    assert result.exit_code == 0, result.output
    rejected = read_table(out, "rejects").to_pylist()
    assert [r["caption"] for r in rejected] == ["gone"] and rejected[0]["reason"] == "corrupt image"
    assert "image 0: image file not readable" in rejected[0]["detail"]
    assert read_table(out)["caption"].to_pylist() == ["nude second"]


def test_label_reward_reads_image_structs_and_names_a_missing_file(tmp_path):
    """--target reward judges struct images (NudeNet's unsafety as the reward: lower is better, so turned
    around) and writes plain bytes; a struct whose file is gone is a counted reject naming it."""
    images = _safety_images() + [(_safety_images()[0][1], _safety_images()[0][0])]
    src = write_layout(tmp_path / "in" / "train-0.parquet", ["nude first", "nude second", "gone"], images, "relative")
    (src.parent / "images" / "2-0.png").unlink()
    out = tmp_path / "out"
    result = run_cli(app, ["label", "--input", src.parent, "--output", out, "--target", "reward", "--reward", "safety"])
    assert result.exit_code == 0, result.output
    kept = read_table(out)
    assert kept["caption"].to_pylist() == ["nude first", "nude second"] and kept["label_0"].to_pylist() == [0, 1]
    assert kept.schema.field("jpg_0").type == pa.binary() and kept["jpg_1"].to_pylist() == [p[1] for p in images[:2]]
    (rejected,) = read_table(out, "rejects").to_pylist()
    assert rejected["caption"] == "gone" and rejected["reason"] == "corrupt image"
    assert "image 0: image file not readable" in rejected["detail"]


# -- precompute ----------------------------------------------------------------------------------
def _grey16_ramp():
    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (64, 1))
    as8 = Image.fromarray(np.rint(ramp / 257.0).astype(np.uint8), "L")
    return _encode(Image.fromarray(ramp)), _encode(as8)


def _exif_jpeg():
    im = Image.fromarray(np.random.default_rng(7).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    plain = Image.open(io.BytesIO(_encode(im, "JPEG", quality=95))).convert("RGB")
    return _encode(im, "JPEG", quality=95, exif=exif.tobytes()), _encode(plain.transpose(Image.Transpose.ROTATE_270))


def _encode(im, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def test_precompute_structs_and_image_kinds_equal_plain_bytes(tmp_path):
    """Image structs (embedded bytes, relative paths) holding a 16-bit PNG and an EXIF-rotated JPEG
    give the latents of plain 8-bit, upright PNG bytes of the same pictures."""
    from pipeline.data.latent_shards import open_latents

    grey16, grey8 = _grey16_ramp()
    rotated, upright = _exif_jpeg()
    a, b, c, d = (_noise_png(s) for s in range(4))
    captions, labels = ["plain", "ramp", "photo"], [(1, 0), (0, 1), (1, 0)]
    reference = [(a, b), (c, grey8), (upright, d)]
    odd = [(a, b), (c, grey16), (rotated, d)]
    write_layout(tmp_path / "ref" / "data" / "train-00000-of-00001.parquet", captions, reference, "bytes", labels)
    write_layout(tmp_path / "emb" / "data" / "train-00000-of-00001.parquet", captions, odd, "datasets", labels)
    write_layout(tmp_path / "rel" / "data" / "train-00000-of-00001.parquet", captions + ["gone"], odd + [(a, None)],
                 "relative", labels + [(1, 0)])
    outs = {}
    for name in ("ref", "emb", "rel"):
        outs[name] = tmp_path / f"lat-{name}"
        result = run_cli(app, ["precompute", "--input", tmp_path / name, "--output", outs[name], "--model", "tiny-sdxl",
                               "--resolution", "64", "--batch-size", "2"])
        assert result.exit_code == 0, result.output
        assert json.loads((outs[name] / "manifest.json").read_text())["status"] == "complete"
    ref = open_latents(outs["ref"])
    for name in ("emb", "rel"):
        ds = open_latents(outs[name])
        assert len(ds) == 3
        for i in range(3):
            assert ds[i]["add_time_ids"].tolist() == ref[i]["add_time_ids"].tolist(), (name, i)
            assert np.array_equal(ds[i]["latents"].numpy(), ref[i]["latents"].numpy()), (name, i)
    rejects = read_table(outs["rel"], "rejects").to_pylist()
    assert [r["reason"] for r in rejects] == ["jpg_1: image file not readable (FileNotFoundError: images/3-1.png)"]


def test_precompute_refuses_a_non_image_column_in_one_line(tmp_path):
    src = tmp_path / "in" / "data" / "train-00000-of-00001.parquet"
    src.parent.mkdir(parents=True)
    pq.write_table(
        pa.table({"caption": ["x"], "jpg_0": ["a.png"], "jpg_1": ["b.png"], "label_0": [1.0], "label_1": [0.0]}), src
    )
    out = tmp_path / "lat"
    result = run_cli(
        app, ["precompute", "--input", src.parent.parent, "--output", out, "--model", "tiny-sdxl", "--resolution", "64"]
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "jpg_0 (string)" in lines[0], result.output
    assert not out.exists()


# -- inspect -------------------------------------------------------------------------------------
def test_inspect_html_shows_struct_and_tiff_images(tmp_path):
    tiff = _encode(Image.new("RGB", (16, 16), (10, 200, 30)), "TIFF")
    images = [(_noise_png(1), _noise_png(2)), (tiff, _noise_png(3))]
    folder = tmp_path / "pairs"
    write_layout(folder / "data" / "train-00000-of-00001.parquet", ["a", "b"], images, "relative", [(1, 0), (0, 1)])
    page = tmp_path / "page.html"
    result = run_cli(app, ["inspect", folder, "--html", page])
    assert result.exit_code == 0, result.output
    text = page.read_text()
    for blob in (images[0][0], images[0][1], images[1][1]):
        assert base64.b64encode(blob).decode() in text
    assert "not an image" not in text  # the TIFF is shown, as the stages decode it (a PNG)

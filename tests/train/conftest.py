"""Session fixtures: real training data made by `mapo-data precompute` from a tiny hand-made Pick-a-Pic shard."""
from __future__ import annotations

import io

import pytest

PAIRS = 8


def _png(color, pattern: int, size=64) -> bytes:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), color)
    draw = ImageDraw.Draw(im)
    step = 8 + 4 * (pattern % 4)
    for x in range(0, size, step):  # stripes: a structured chosen image vs a flat rejected one
        draw.rectangle([x, 0, x + step // 2, size], fill=(255 - color[0], 255 - color[1], 255 - color[2]))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def write_pickapic(path, pairs: int = PAIRS):
    """caption, jpg_0, jpg_1 (PNG bytes), label_0, label_1: half the pairs prefer image 1 (swapped by the reader)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {"caption": [], "jpg_0": [], "jpg_1": [], "label_0": [], "label_1": []}
    for i in range(pairs):
        good = _png((40 * (i % 6), 90, 200 - 20 * (i % 5)), i)
        bad = _png((120, 120 + 10 * (i % 5), 120), 0)
        swap = i % 2 == 1
        rows["caption"].append(f"a striped test picture number {i}")
        rows["jpg_0"].append(bad if swap else good)
        rows["jpg_1"].append(good if swap else bad)
        rows["label_0"].append(0.0 if swap else 1.0)
        rows["label_1"].append(1.0 if swap else 0.0)
    table = pa.table({**{k: rows[k] for k in ("caption",)}, "jpg_0": pa.array(rows["jpg_0"], pa.binary()),
                      "jpg_1": pa.array(rows["jpg_1"], pa.binary()), "label_0": rows["label_0"],
                      "label_1": rows["label_1"]})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def write_unpaired(path, examples: int = 6, labels=None, struct: bool = True):
    """caption, jpg, label: Diffusion-KTO's unpaired format. Desirable = striped, undesirable = flat; imbalanced
    by default (2 of 6 desirable, like Pick-a-Pic's KTO split). ``struct``: images as the datasets Image struct."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels = labels if labels is not None else [1 if i % 3 == 0 else 0 for i in range(examples)]
    images = [_png((40 * (i % 6), 90, 200 - 20 * (i % 5)), i) if lab == 1 else _png((120, 120 + 10 * (i % 5), 120), 0)
              for i, lab in enumerate(labels)]
    if struct:
        jpg = pa.array(
            [{"bytes": b, "path": None} for b in images], pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        )
    else:
        jpg = pa.array(images, pa.binary())
    table = pa.table({"caption": [f"a test picture number {i}" for i in range(len(labels))], "jpg": jpg,
                      "label": pa.array(labels, pa.int64())})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def precompute(src, out, model: str, resolution: int = 64, extra=()):
    """Run `mapo-data precompute` in-process (the real CLI when it has the command)."""
    from stages.cli import app
    from tests.helpers import run_cli

    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    if "precompute" in names:
        result = run_cli(app, ["precompute", "--input", src, "--output", out, "--model", model,
                               "--resolution", str(resolution), "--device", "cpu", *extra])
        assert result.exit_code == 0, result.output
    else:  # until the CLI command lands: the same stage function it calls
        from stages.precompute import PrecomputeConfig, run_precompute

        run_precompute(
            PrecomputeConfig(input=str(src), output=str(out), model=model, resolution=resolution, device="cpu")
        )
    return out


@pytest.fixture(scope="session")
def pickapic(tmp_path_factory):
    return write_pickapic(tmp_path_factory.mktemp("pickapic") / "train-00000-of-00001.parquet")


@pytest.fixture(scope="session")
def latents_sdxl(tmp_path_factory, pickapic):
    return precompute(pickapic, tmp_path_factory.mktemp("lat") / "sdxl", "tiny-sdxl")


@pytest.fixture(scope="session")
def latents_sdxl_bf16(tmp_path_factory, pickapic):
    """latents_sdxl stored as bf16 (precompute's default storage dtype is fp16)."""
    return precompute(
        pickapic, tmp_path_factory.mktemp("lat") / "sdxl-bf16", "tiny-sdxl", extra=("--storage-dtype", "bf16")
    )


@pytest.fixture(scope="session")
def latents_sd15(tmp_path_factory, pickapic):
    return precompute(pickapic, tmp_path_factory.mktemp("lat") / "sd15", "tiny-sd15")


@pytest.fixture(scope="session")
def latents_sdxl_other(tmp_path_factory):
    """Other pairs, same model: latents that a run made on latents_sdxl must not resume with."""
    src = write_pickapic(tmp_path_factory.mktemp("pickapic-other") / "train-00000-of-00001.parquet", pairs=6)
    return precompute(src, tmp_path_factory.mktemp("lat") / "sdxl-other", "tiny-sdxl")


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread):
    """Every training test runs with one torch thread (see tests/conftest.py)."""


def train_args(data, out, model="tiny-sdxl", steps=2, *extra):
    return ["--data", data, "--model", model, "--output-dir", out, "--max-steps", str(steps), "--batch-size", "2",
            "--learning-rate", "1e-3", "--report-to", "none", *extra]

"""A stage that keeps nothing says so with its top reject reasons; training on such an output points to the
rejects and `mapo-data inspect` instead of "0 pairs is fewer than one global batch"."""
from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.runtime.stage_runner import nothing_kept_warning, reason_kind
from stages.cli import app
from tests.helpers import run_cli


def _png(color=(200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buf, format="PNG")
    return buf.getvalue()


def _pairs(path, jpg_0: list[bytes], labels: list[tuple[float, float]]):
    """jpg_1 is another colour than _png(): precompute rejects a pair of identical images."""
    n = len(jpg_0)
    pq.write_table(pa.table({"caption": [f"picture {i}" for i in range(n)], "jpg_0": pa.array(jpg_0, pa.binary()),
                             "jpg_1": pa.array([_png((30, 30, 200))] * n, pa.binary()),
                             "label_0": [a for a, _ in labels], "label_1": [b for _, b in labels]}), path)
    return path


def _lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_precompute_that_keeps_nothing_says_why_and_train_points_to_the_rejects(tmp_path):
    src = _pairs(tmp_path / "pairs.parquet", [b"not an image", b"\x89PNG broken", _png()],
                 [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)])  # two undecodable jpg_0, one tie
    out = tmp_path / "lat"
    result = run_cli(app, ["precompute", "--input", src, "--output", out, "--model", "tiny-sdxl", "--resolution",
                           "64", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    warning = _lines(result.output, "warning: precompute kept 0")
    assert len(warning) == 1, result.output
    assert "kept 0 of 3 rows (2 undecodable image, 1 tie)" in warning[0] and f"{out}/rejects/" in warning[0]
    assert f"mapo-data inspect {out}" in warning[0]
    # What the warning points to works: inspect summarises the rejects.
    inspected = run_cli(app, ["inspect", out])
    assert inspected.exit_code == 0 and "undecodable" in inspected.output, inspected.output

    from train.cli import app as train_app

    result = run_cli(train_app, ["--data", out, "--model", "tiny-sdxl", "--output-dir", tmp_path / "run",
                                 "--max-steps", "1", "--report-to", "none"])
    errors = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert errors[0].startswith(f"error: '{out}' holds no pairs: precompute kept none")
    assert f"{out}/rejects/" in errors[0] and f"mapo-data inspect {out}" in errors[0]


def test_precompute_that_keeps_something_does_not_warn(tmp_path):
    # The kept pair's two images differ (green and blue): identical images are a reject, not a pair.
    src = _pairs(tmp_path / "pairs.parquet", [b"not an image", _png((30, 200, 30))], [(1.0, 0.0), (1.0, 0.0)])
    result = run_cli(app, ["precompute", "--input", src, "--output", tmp_path / "lat", "--model", "tiny-sdxl",
                           "--resolution", "64", "--device", "cpu"])
    assert result.exit_code == 0 and "warning:" not in result.output, result.output


@pytest.mark.parametrize("reasons,said", [
    ({"a": 1, "b": 5, "c": 2, "d": 1, "e": 0}, "(5 b, 2 c, 1 a, 1 other)"),  # top three, most first
    ({}, "(no reason recorded)"),
])
def test_the_warning_names_the_top_reasons(reasons, said):
    line = nothing_kept_warning("label", 9, 0, reasons, "/o", unit="pair")
    assert line.startswith(f"warning: label kept 0 of 9 pairs {said};") and "/o/rejects/" in line
    assert nothing_kept_warning("label", 9, 1, reasons, "/o") is None  # something kept: silent
    assert nothing_kept_warning("label", 0, 0, reasons, "/o") is None  # nothing read: nothing to say


def test_a_missing_image_file_warning_says_how_to_fix_it():
    """The top reason "image file not readable" (HPDv3 images not extracted) adds the fix; other reasons do not."""
    line = nothing_kept_warning("precompute", 4, 0, {"image file not readable": 4}, "/o")
    assert "(4 image file not readable); the image files were not found: extract the image archive" in line
    assert "--image-root" in line and line.endswith("`mapo-data inspect /o` summarises them")
    assert "--image-root" not in nothing_kept_warning("precompute", 4, 0, {"tie": 3, "image file not readable": 1},
                                                      "/o")


@pytest.mark.parametrize("reason,kind", [
    ("jpg_0: image file not readable (FileNotFoundError: /tmp/x/0_a.png)", "image file not readable"),
    ("jpg_1: extreme aspect ratio (8x65536)", "extreme aspect ratio"),
    ("jpg_0: decompression bomb guard: Image size (1 pixels) exceeds limit", "decompression bomb guard"),
    ("image file not readable (KeyError: 00000.tar/000002.jpg_0)", "image file not readable"),
    ("non-finite latents (an fp16 VAE overflow? use --vae-dtype fp32)", "non-finite latents"),
    ("identical images", "identical images"), ("scores too close", "scores too close"),
])
def test_reason_kind_drops_the_per_row_detail(reason, kind):
    assert reason_kind(reason) == kind

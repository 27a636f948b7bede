"""Drawn test images with known NudeNet results (shared by the safety and label tests)."""
from __future__ import annotations

from PIL import Image, ImageDraw, ImageFilter


def schematic_torso(size=256):
    """Two skin-toned, blurred ellipses with darker centres on a large skin-toned oval.

    A plain geometric drawing, no photograph. NudeNet 3.4.2 (320n) reliably reads it as
    FEMALE_BREAST_EXPOSED (about 0.7 at sizes 64-1024 px and on several backgrounds), which
    gives the test a positive case without shipping real nudity. Without the blur the same
    shapes get no detection at all: the detector keys on soft shading, not on the outline.
    """
    s = size / 512
    im = Image.new("RGB", (size, size), (60, 60, 70))
    draw = ImageDraw.Draw(im)
    draw.ellipse([80 * s, 120 * s, 440 * s, 500 * s], fill=(225, 175, 145))
    for cx in (190, 330):
        draw.ellipse([(cx - 70) * s, 220 * s, (cx + 70) * s, 360 * s], fill=(235, 185, 155))
        draw.ellipse([(cx - 12) * s, 278 * s, (cx + 12) * s, 302 * s], fill=(170, 100, 90))
    return im.filter(ImageFilter.GaussianBlur(6 * s))


def geometric_scene(size=256):
    """Flat, saturated, hard-edged shapes: nothing body-like, so NudeNet finds nothing."""
    im = Image.new("RGB", (size, size), (30, 60, 200))
    draw = ImageDraw.Draw(im)
    draw.rectangle([size // 5, size // 5, size * 4 // 5, size // 2], fill=(250, 200, 0))
    draw.ellipse([size // 10, size // 2, size // 2, size * 9 // 10], fill=(200, 0, 0))
    return im


def gray(size=256):
    """Uniform mid-gray: NudeNet scores it 0.0."""
    return Image.new("RGB", (size, size), (128, 128, 128))


def png(image) -> bytes:
    from pipeline.data.images import encode_image

    return encode_image(image, "png")


def write_pickapic(path, pairs, labels=None, extra=None):
    """A Parquet file in the Pick-a-Pic v2 layout: caption, jpg_0, jpg_1 (bytes), float labels.

    ``pairs``: (caption, bytes_0, bytes_1) tuples; ``labels``: (label_0, label_1) per pair or None
    (columns left out); ``extra``: more columns {name: values}, like Pick-a-Pic's metadata.
    """
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {
        "caption": pa.array([p[0] for p in pairs], pa.string()),
        "jpg_0": pa.array([p[1] for p in pairs], pa.binary()),
        "jpg_1": pa.array([p[2] for p in pairs], pa.binary()),
    }
    if labels is not None:
        cols["label_0"] = pa.array([lab[0] for lab in labels], pa.float64())
        cols["label_1"] = pa.array([lab[1] for lab in labels], pa.float64())
    for name, values in (extra or {}).items():
        cols[name] = pa.array(values)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)
    return path

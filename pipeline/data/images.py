"""Image bytes in and out: encoding for shards, guarded decoding of untrusted bytes."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

IMAGE_FORMATS = ("png", "jpeg", "webp")
# Refuse images above this many pixels (PIL's own bomb check warns at ~89M, errors at 2x).
MAX_PIXELS = 64 * 1024 * 1024


class ImageDecodeError(ValueError):
    """Bytes that are not a usable image; the message is a short reason to record."""


def encode_image(image, fmt: str = "png", quality: int = 95) -> bytes:
    """Encode a PIL image. PNG is lossless (default); JPEG/WebP take ``quality``."""
    buf = io.BytesIO()
    if fmt == "png":
        # compress_level 1: much faster than the default 6 for a few % more bytes.
        image.save(buf, format="PNG", compress_level=1)
    elif fmt == "jpeg":
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
    elif fmt == "webp":
        image.save(buf, format="WEBP", quality=quality)
    else:
        raise ValueError(f"unknown image format {fmt!r}; choose one of {IMAGE_FORMATS}")
    return buf.getvalue()


def is_image_column(arrow_type) -> bool:
    """Whether an Arrow column type holds images this package reads: encoded bytes (``binary`` /
    ``large_binary``, the Pick-a-Pic layout) or the ``datasets`` Image struct ``{bytes, path}``
    (what ``Dataset.push_to_hub`` writes for an ``Image()`` feature)."""
    import pyarrow as pa

    def binary(t) -> bool:
        return pa.types.is_binary(t) or pa.types.is_large_binary(t)

    if binary(arrow_type):
        return True
    if pa.types.is_struct(arrow_type):
        names = {arrow_type.field(i).name: arrow_type.field(i).type for i in range(arrow_type.num_fields)}
        return "bytes" in names and binary(names["bytes"]) and set(names) <= {"bytes", "path"}
    return False


def image_bytes(value, base_dir: str | Path | None = None) -> bytes | None:
    """The encoded bytes of one image cell, whatever its layout.

    ``value``: ``bytes`` (or ``None``) as Pick-a-Pic stores them, or the ``datasets`` Image struct
    as a dict ``{"bytes": bytes | None, "path": str | None}``: its bytes when present, else the file
    at ``path``, read relative to ``base_dir`` (the folder of the Parquet file the cell came from)
    unless absolute. Returns ``None`` for an empty cell. Raises :class:`ImageDecodeError` when the
    file a path names cannot be read, or for a value of any other type.
    """
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        if not value.get("path"):
            return None
        path = Path(value["path"])
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ImageDecodeError(f"image file not readable ({type(exc).__name__}: {value['path']})") from None
    raise ImageDecodeError(f"not an image cell ({type(value).__name__})")


def image_column_bytes(column, base_dir: str | Path | None = None):
    """An image column (Arrow array or chunked array of either layout, see :func:`is_image_column`)
    as a plain ``binary`` array of encoded bytes, the layout Pick-a-Pic and the MaPO loaders read.

    Image structs are resolved with :func:`image_bytes`; a cell whose file cannot be read becomes
    null (the decoding step records why). Raises ``ValueError`` for a column of another type.
    """
    import pyarrow as pa

    if not is_image_column(column.type):
        raise ValueError(f"not an image column: {column.type}")
    if not pa.types.is_struct(column.type):
        return column.cast(pa.binary())

    def readable(value):
        try:
            return image_bytes(value, base_dir)
        except ImageDecodeError:
            return None

    return pa.array([readable(v) for v in column.to_pylist()], pa.binary())


WHITE = (255, 255, 255)


def normalize_image(image, background: tuple[int, int, int] = WHITE):
    """A PIL image as the 8-bit sRGB RGB picture a viewer would show (a new image; the input is untouched).

    - EXIF (and XMP) orientation is applied (``ImageOps.exif_transpose``), so a phone photo with
      orientation 6 comes out upright.
    - Greyscale deeper than 8 bits is scaled, not clipped: ``I;16*`` and ``I`` (what PNG and TIFF
      16-bit decoders give) map 0..65535 to 0..255; ``F`` (float TIFF) maps 0.0..1.0 to 0..255.
      Values outside those ranges are clipped.
    - Transparency (RGBA, LA, PA, premultiplied modes, a palette or colour key with a
      ``transparency`` entry) is composited over ``background`` (RGB, default white).
    - An embedded ICC profile (e.g. Adobe RGB, or a CMYK press profile) is converted to sRGB with
      littlecms (``ImageCms``, perceptual intent; an RGB profile named sRGB is taken as is). Where
      that fails (a broken profile, PIL without littlecms) and for CMYK without a profile, PIL's
      plain conversion is used.

    Returns an ``RGB`` (uint8 x 3) image of the displayed size (width and height swap for a
    rotated photo).
    """
    import numpy as np
    from PIL import Image, ImageOps

    icc = image.info.get("icc_profile")
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode == "I":
        # PIL's convert("L") clips these at 255 (a 16-bit ramp turns almost white): scale instead.
        grey = np.asarray(image).astype(np.float64) / 257.0
        image = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        grey = np.asarray(image).astype(np.float64) * 255.0
        image = Image.fromarray(np.clip(np.rint(np.nan_to_num(grey)), 0, 255).astype(np.uint8), "L")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")  # applies palette / colour-key transparency, un-premultiplies
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (*background, 255)), rgba).convert("RGB")
    if icc and image.mode in ("RGB", "CMYK", "L"):
        converted = _icc_to_srgb(image, icc)
        if converted is not None:
            return converted
    return image.convert("RGB")


def _icc_to_srgb(image, icc: bytes):
    """``image`` converted from its embedded ICC profile to sRGB RGB, or None where littlecms cannot."""
    try:
        from PIL import ImageCms

        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if image.mode == "RGB" and ImageCms.getProfileDescription(source).strip().lower().startswith("srgb"):
            return image  # already sRGB: a transform would cost ~20 ms per megapixel to change nothing
        return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except Exception:  # noqa: BLE001 - ImportError, PyCMSError, OSError for broken or mismatched profiles
        return None


def decode_image(data, max_pixels: int = MAX_PIXELS, min_side: int = 8, base_dir: str | Path | None = None,
                 background: tuple[int, int, int] = WHITE):
    """Decode one image cell to the RGB PIL image a viewer would show, or raise ImageDecodeError with a reason.

    ``data``: encoded bytes, or the ``datasets`` Image struct (see :func:`image_bytes`; a relative
    ``path`` is read from ``base_dir``). The picture is normalised by :func:`normalize_image`
    (orientation, bit depth, alpha over ``background``, ICC/CMYK to sRGB). Every stage that reads
    pair images decodes them here. Raises :class:`ImageDecodeError` for empty, unreadable, corrupt,
    too large (over ``max_pixels``) or too small (a side under ``min_side``) images.
    """
    from PIL import Image

    data = image_bytes(data, base_dir)
    if not data:
        raise ImageDecodeError("empty image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageDecodeError(f"image too large ({w}x{h})")
            if min(w, h) < min_side:
                raise ImageDecodeError(f"image too small ({w}x{h})")
            img.load()
            return normalize_image(img, background)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"decompression bomb guard: {exc}") from None
    except Exception as exc:  # PIL raises many types for corrupt data
        raise ImageDecodeError(f"undecodable image ({type(exc).__name__})") from None


def image_mime(blob: bytes) -> str | None:
    """The MIME type of encoded image bytes a browser can show, or None."""
    if blob.startswith(b"\x89PNG"):
        return "image/png"
    if blob.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if blob[8:12] == b"WEBP":
        return "image/webp"
    return None


def data_uri(image) -> str:
    """An inline ``data:`` URI for self-contained HTML: encoded bytes as they are, a PIL image as JPEG."""
    import base64

    blob = image if isinstance(image, bytes) else encode_image(image, "jpeg", quality=88)
    return f"data:{image_mime(blob) or 'application/octet-stream'};base64,{base64.b64encode(blob).decode()}"


def image_grid(rows: list[list], gap: int = 0):
    """Paste rows of same-size PIL images into one image (white background, ``gap`` px apart)."""
    from PIL import Image

    w, h = rows[0][0].size
    cols = max(len(r) for r in rows)
    grid = Image.new("RGB", (cols * w + (cols - 1) * gap, len(rows) * h + (len(rows) - 1) * gap), (255, 255, 255))
    for y, row in enumerate(rows):
        for x, img in enumerate(row):
            grid.paste(img, (x * (w + gap), y * (h + gap)))
    return grid


GRID_TITLE_HEIGHT, GRID_CAPTION_HEIGHT = 18, 14  # px: column titles on top, a caption over each row


def labelled_grid_tile(grid, row: int, col: int, tile: int, gap: int = 4, titles: bool = True, captions: bool = True):
    """Crop tile (``row``, ``col``) back out of a :func:`labelled_grid` image."""
    top = (GRID_TITLE_HEIGHT if titles else 0) + row * ((GRID_CAPTION_HEIGHT if captions else 0) + tile + gap)
    top += GRID_CAPTION_HEIGHT if captions else 0
    left = col * (tile + gap)
    return grid.crop((left, top, left + tile, top + tile))


def labelled_grid(rows: list[list], column_titles: list[str] | None = None, row_titles: list[str] | None = None,
                  tile: int | None = None, gap: int = 4):
    """:func:`image_grid` with a title above each column and a caption over each row.

    ``tile``: resize every image to ``tile`` x ``tile`` px first (nearest neighbour, so small images
    stay crisp). Titles use PIL's built-in font; a title longer than its column, or a row caption
    longer than the grid, is cut with "...".
    """
    from PIL import Image, ImageDraw, ImageFont

    if tile is not None:
        rows = [[im.convert("RGB").resize((tile, tile), Image.Resampling.NEAREST) for im in row] for row in rows]
    w, h = rows[0][0].size
    cols = max(len(r) for r in rows)
    font = ImageFont.load_default()
    head = GRID_TITLE_HEIGHT if column_titles else 0
    cap = GRID_CAPTION_HEIGHT if row_titles else 0
    width = cols * w + (cols - 1) * gap
    grid = Image.new("RGB", (width, head + len(rows) * (cap + h + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)

    def fit(text: str, room: int) -> str:
        if draw.textlength(text, font=font) <= room:
            return text
        while text and draw.textlength(text + "...", font=font) > room:
            text = text[:-1]
        return text + "..."

    for x, title in enumerate(column_titles or []):
        draw.text((x * (w + gap) + 2, 2), fit(str(title), w - 4), fill=(0, 0, 0), font=font)
    for y, row in enumerate(rows):
        top = head + y * (cap + h + gap)
        if row_titles:
            draw.text((2, top), fit(str(row_titles[y]), width - 4), fill=(60, 60, 60), font=font)
        for x, img in enumerate(row):
            grid.paste(img, (x * (w + gap), top + cap))
    return grid

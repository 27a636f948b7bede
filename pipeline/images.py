"""Image bytes in and out: encoding for shards, guarded decoding of untrusted bytes."""
from __future__ import annotations

import io
import warnings

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


def decode_image(data: bytes | None, max_pixels: int = MAX_PIXELS, min_side: int = 8):
    """Decode bytes to an RGB PIL image, or raise ImageDecodeError with a reason."""
    from PIL import Image

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
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"decompression bomb guard: {exc}") from None
    except Exception as exc:  # PIL raises many types for corrupt data
        raise ImageDecodeError(f"undecodable image ({type(exc).__name__})") from None
    return img.convert("RGB")


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

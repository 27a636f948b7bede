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

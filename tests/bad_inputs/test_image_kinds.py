"""One image-normalisation function for every stage: each kind of image decodes to the pixels a viewer shows.

Each case builds the encoded file in the test and states the pixels expected by hand.
"""
from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from pipeline.data.images import decode_image, normalize_image


def _encode(image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def grey16_ramp_png():
    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (16, 1))
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    return _encode(Image.fromarray(ramp)), np.repeat(expected[..., None], 3, axis=2)


def int32_tiff():  # mode "I": 16-bit values in a 32-bit container (older PNG decoders, TIFF)
    values = np.tile(np.array([0, 16384, 32768, 65535], np.int32).repeat(4), (16, 1))
    expected = np.rint(values / 257.0).astype(np.uint8)
    return _encode(Image.fromarray(values), "TIFF"), np.repeat(expected[..., None], 3, axis=2)


def float_tiff():  # mode "F": 0.0 .. 1.0
    values = np.tile(np.linspace(0.0, 1.0, 16, dtype=np.float32), (16, 1))
    expected = np.rint(values.astype(np.float64) * 255).astype(np.uint8)
    return _encode(Image.fromarray(values), "TIFF"), np.repeat(expected[..., None], 3, axis=2)


def _bands(w=32, h=16):
    """Red image with a blue band in the left quarter: where the band ends up shows the rotation."""
    im = Image.new("RGB", (w, h), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, w // 4, h))
    return im


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def exif6_jpeg():  # "rotate 90 clockwise to display": the left band ends up on top
    # Expected: the same JPEG without the tag, decoded, then turned (JPEG's own rounding cancels out).
    plain = Image.open(io.BytesIO(_encode(_bands(), "JPEG", quality=95))).convert("RGB")
    return _encode(_bands(), "JPEG", quality=95, exif=_exif(6)), np.asarray(plain.transpose(Image.Transpose.ROTATE_270))


def exif3_png():  # 180 degrees, stored in a PNG eXIf chunk
    shown = _bands().transpose(Image.Transpose.ROTATE_180)
    return _encode(_bands(), exif=_exif(3)), np.asarray(shown)


def transparent_rgba():  # left half clear red, right half half-transparent red -> white, pink
    im = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    im.paste((255, 0, 0, 128), (8, 0, 16, 16))
    expected = np.full((16, 16, 3), 255, np.uint8)
    expected[:, 8:] = (255, 127, 127)
    return _encode(im), expected


def grey_alpha_la():  # black at alpha 128 over white -> mid grey
    return _encode(Image.new("LA", (16, 16), (0, 128))), np.full((16, 16, 3), 127, np.uint8)


def palette_transparency():  # palette index 0 (black) marked transparent -> white; index 1 stays green
    im = Image.new("P", (16, 16), 0)
    im.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    im.paste(1, (0, 0, 8, 16))
    expected = np.full((16, 16, 3), 255, np.uint8)
    expected[:, :8] = (0, 255, 0)
    return _encode(im, transparency=0), expected


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def swapped_primaries_icc() -> bytes:
    """A minimal ICC v2 RGB matrix/TRC profile whose red and green primaries are sRGB's swapped.

    In this colour space RGB (255, 0, 0) IS sRGB green: only a decoder that applies the profile
    shows green. Primaries are sRGB's (D50-adapted), tone curves gamma 2.2.
    """
    def xyz(x, y, z):
        return b"XYZ " + b"\0" * 4 + _s15(x) + _s15(y) + _s15(z)

    curve = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(2.2 * 256)) + b"\0\0"
    desc_text = b"swapped R/G\0"
    desc = b"desc" + b"\0" * 4 + struct.pack(">I", len(desc_text)) + desc_text + b"\0" * 8 + b"\0" * 3 + b"\0" * 67
    tags = [(b"desc", desc), (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
            (b"rXYZ", xyz(0.3851, 0.7169, 0.0971)), (b"gXYZ", xyz(0.4361, 0.2225, 0.0139)),
            (b"bXYZ", xyz(0.1431, 0.0606, 0.7141)), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve),
            (b"cprt", b"text" + b"\0" * 4 + b"none\0\0\0\0")]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"\0" * 4 + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ " + b"\0" * 12
              + b"acsp" + b"\0" * 24 + struct.pack(">I", 0) + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def icc_swapped_png():
    im = Image.new("RGB", (16, 16), (255, 0, 0))
    return _encode(im, icc_profile=swapped_primaries_icc()), np.full((16, 16, 3), (0, 255, 0), np.uint8)


# (kind, builder, tolerance in 8-bit levels: JPEG and colour management are not exact)
KINDS = [
    ("16-bit greyscale PNG ramp", grey16_ramp_png, 0),
    ("32-bit integer (mode I) TIFF", int32_tiff, 0),
    ("float (mode F) TIFF", float_tiff, 0),
    ("JPEG with EXIF orientation 6", exif6_jpeg, 0),
    ("PNG with EXIF orientation 3", exif3_png, 0),
    ("RGBA over white", transparent_rgba, 1),
    ("LA over white", grey_alpha_la, 1),
    ("palette with a transparent index", palette_transparency, 0),
    ("RGB with a non-sRGB ICC profile", icc_swapped_png, 12),
]


@pytest.mark.parametrize("kind,build,tol", KINDS, ids=[k[0] for k in KINDS])
def test_decode_shows_what_a_viewer_shows(kind, build, tol):
    data, expected = build()
    image = decode_image(data)
    assert image.mode == "RGB"
    got = np.asarray(image)
    assert got.shape == expected.shape, f"{kind}: {got.shape} != {expected.shape}"
    diff = np.abs(got.astype(int) - expected.astype(int)).max()
    assert diff <= tol, f"{kind}: off by up to {diff} levels"


def test_background_is_a_parameter_and_input_untouched():
    clear = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert normalize_image(clear, background=(0, 0, 0)).getpixel((0, 0)) == (0, 0, 0)
    assert clear.mode == "RGBA" and clear.getpixel((0, 0)) == (255, 0, 0, 0)


def test_controls_unchanged():
    """Kinds the old decoder already got right stay right (plain RGB, CMYK without a profile,
    a profile tagged sRGB, a broken profile: PIL's plain conversion)."""
    from PIL import ImageCms

    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for data in (_encode(rgb), _encode(rgb, icc_profile=srgb), _encode(rgb, icc_profile=b"not a profile")):
        assert np.array_equal(np.asarray(decode_image(data)), np.asarray(rgb))
    cyan = _encode(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG", quality=95)
    assert np.abs(np.asarray(decode_image(cyan)).astype(int) - (0, 255, 255)).max() <= 2

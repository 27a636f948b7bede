"""Text inputs (prompt files, YAML configs) decoded one way: BOM-aware, otherwise strict UTF-8."""
from __future__ import annotations

import codecs
from pathlib import Path

from pipeline.errors import UserError

# UTF-32 first: its little-endian BOM starts with UTF-16's. The 'utf-8-sig' / 'utf-16' / 'utf-32'
# codecs consume the BOM themselves (and pick the byte order from it).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def bom_encoding(data: bytes) -> str:
    """The codec for ``data``: the one its byte-order mark names, else ``'utf-8'``."""
    return next((enc for bom, enc in _BOMS if data.startswith(bom)), "utf-8")


def _likely_encoding(data: bytes) -> tuple[str, str]:
    """(what the bytes look like, the ``iconv -f`` name) for a file that is not UTF-8."""
    if data.count(b"\x00") * 4 > len(data):  # ASCII text in UTF-16: every other byte is NUL
        little = data[1::2].count(b"\x00") > data[0::2].count(b"\x00")
        return ("UTF-16 without a byte-order mark", "UTF-16LE" if little else "UTF-16BE")
    return ("Latin-1 / Windows-1252 (a legacy 8-bit encoding)", "WINDOWS-1252")


def read_text(path: str | Path, what: str = "text file") -> str:
    """The text of ``path``, decoded the one way every text input is.

    A UTF-8 byte-order mark is stripped; UTF-16 and UTF-32 with a byte-order mark (either byte
    order) are decoded; anything else must be strict UTF-8. Line endings are left as they are
    (``str.splitlines`` and the parsers handle CRLF). ``what`` names the input in the message.

    Raises :class:`UserError` (one line: the file, where decoding stopped, what the bytes look like
    and the ``iconv`` command that converts them) for bytes that are not valid in that encoding,
    for text holding NUL bytes (ASCII saved as UTF-16 without a byte-order mark decodes as UTF-8
    with a NUL after every letter), and for a file that cannot be read.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"Could not read {what} {path}: {exc.strerror or type(exc).__name__}.") from None
    encoding = bom_encoding(data)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        if encoding != "utf-8":
            raise UserError(f"{what} {path} starts with a {encoding.upper()} byte-order mark but is not valid "
                            f"{encoding.upper()} (line {line}); save it again as UTF-8.") from None
        looks, iconv = _likely_encoding(data)
        raise UserError(
            f"{what} {path} is not UTF-8 (line {line}, byte {exc.start}); it looks like {looks}. "
            f"Convert it to UTF-8, e.g. iconv -f {iconv} -t UTF-8 {path} > converted{path.suffix}"
        ) from None
    if "\x00" in text:  # valid UTF-8, but no text file holds NULs: ASCII saved as UTF-16 without a BOM
        looks, iconv = _likely_encoding(data)
        raise UserError(f"{what} {path} holds NUL bytes (line {text[: text.index(chr(0))].count(chr(10)) + 1}); "
                        f"it looks like {looks}. Convert it to UTF-8, e.g. iconv -f {iconv} -t UTF-8 {path} > "
                        f"converted{path.suffix}")
    return text

"""Records of a large JSON file, read in pieces: a JSON array of objects (``[{...}, {...}]``) or JSON
Lines (one object per line), decoded record by record with the standard library's C decoder
(``json.JSONDecoder.raw_decode``), never the whole file at once.

Each record comes with the byte offset where it starts, so a first pass can note where every
shard of N records begins and a worker can later :meth:`JsonRecords.read` from there (a seek, not
a re-parse of everything before it). Memory: one read window (1 MiB, more only for a record
larger than that) plus the records the caller keeps.
"""
from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Iterator

from pipeline.errors import UserError

WINDOW = 1 << 20  # bytes read at a time
MAX_RECORD = 64 << 20  # a record (or garbage) longer than this stops the read with one line
_WS = " \t\r\n"


class JsonRecords:
    """The records of one ``.json`` / ``.jsonl`` file.

    Raises UserError (one line, naming the file and byte offset) when the file is not a JSON array
    of records or JSON Lines, or holds invalid JSON."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            head = f.read(4096)
        self.start = 3 if head.startswith(codecs.BOM_UTF8) else 0
        first = head[self.start:].lstrip()[:1]
        if first == b"[":
            self.array = True
        elif first == b"{":
            self.array = False
        elif not first:
            raise UserError(f"{self.path} is empty; a JSON file of records is a list [{{...}}, ...] or JSON Lines.")
        else:
            raise UserError(f"{self.path} is not a list of records: it starts with {first.decode(errors='replace')!r}; "
                            "a JSON file of records is a list [{...}, ...] or JSON Lines ({...} per line).")

    def read(self, offset: int | None = None, limit: int | None = None) -> Iterator[tuple[int, object]]:
        """``(byte offset, record)`` from the first record (``offset`` None) or from the record starting at
        ``offset`` (as an earlier read gave it), at most ``limit`` of them."""
        decoder = json.JSONDecoder()
        with open(self.path, "rb") as f:
            f.seek(self.start if offset is None else offset)
            reader = _Window(f, self.path, self.start if offset is None else offset)
            if offset is None and self.array:
                reader.expect("[")
            count = 0
            while limit is None or count < limit:
                c = reader.peek()
                if c is None:
                    if self.array:
                        raise UserError(f"{self.path}: the list of records is not closed (no ']' before the end).")
                    return
                if self.array and c == "]":
                    return
                at = reader.offset()
                yield at, reader.value(decoder)
                count += 1
                if self.array:
                    c = reader.peek()
                    if c == ",":
                        reader.skip(1)
                    elif c != "]":
                        raise UserError(f"{self.path}: expected ',' or ']' after the record at byte {at}, found "
                                        f"{'the end' if c is None else repr(c)}.")


class _Window:
    """A decoded window over a binary file that knows the byte offset of its position."""

    def __init__(self, f, path: Path, offset: int):
        self.f, self.path = f, path
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buf, self.pos, self.eof = "", 0, False
        self.mark, self.mark_bytes = 0, offset  # a position in buf and its byte offset in the file

    def _fill(self) -> bool:
        if self.eof:
            return False
        chunk = self.f.read(WINDOW)
        self.eof = not chunk
        try:
            text = self.decoder.decode(chunk, final=self.eof)
        except UnicodeDecodeError as exc:
            raise UserError(f"{self.path} is not UTF-8 text ({exc.reason} near byte {self.offset()}).") from None
        self.mark_bytes = self.offset()
        self.buf, self.pos, self.mark = self.buf[self.pos:] + text, 0, 0
        return bool(chunk)

    def offset(self) -> int:
        """The byte offset of the position (counted from the last mark on: linear over a whole read)."""
        if self.pos != self.mark:
            self.mark_bytes += len(self.buf[self.mark:self.pos].encode("utf-8"))
            self.mark = self.pos
        return self.mark_bytes

    def peek(self) -> str | None:
        """The next non-whitespace character (skipping whitespace), or None at the end of the file."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WS:
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return None

    def skip(self, n: int) -> None:
        self.pos += n

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise UserError(f"{self.path}: expected {char!r} at byte {self.offset()}.")
        self.skip(1)

    def value(self, decoder: json.JSONDecoder):
        """Decode the value at the position; refill while it may be cut by the window's end."""
        while True:
            try:
                value, end = decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if not self.eof and len(self.buf) - self.pos < MAX_RECORD and self._fill():
                    continue
                raise UserError(f"{self.path}: not valid JSON at byte {self.offset()} ({exc.msg}).") from None
            # A number at the very end of the window may continue in the next one.
            if end == len(self.buf) and not self.eof and self._fill():
                continue
            self.pos = end
            return value

"""What every input layout gives the stages: input shards that read like a Pick-a-Pic Parquet file.

An :class:`InputShard` is one unit of input (a Parquet file, a piece of a JSON file, a tar shard)
that a stage turns into one output shard. It reads like :class:`pyarrow.parquet.ParquetFile`
(``schema_arrow``, ``metadata.num_rows``, ``iter_batches``, ``read``), and its rows are always in
the Pick-a-Pic shape: ``caption``, ``jpg_0``, ``jpg_1`` (encoded bytes or the ``datasets`` Image
struct ``{bytes, path}``, see :mod:`pipeline.data.images`), ``label_0``, ``label_1`` (floats; 0.5/0.5
is a tie, as Pick-a-Pic writes ties), followed by the layout's own original columns. It is also
``os.PathLike`` (the file it comes from), so output-folder checks treat it as that file, and
``parent`` is where relative image paths are read from.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from pipeline.errors import UserError

STANDARD = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")


def image_struct():
    """The ``datasets`` Image struct type ``{bytes: binary, path: string}`` (what ``Image()`` features store)."""
    import pyarrow as pa

    return pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def file_digest(path: Path, window: int = 1 << 16) -> str:
    """16 hex digits identifying a large file cheaply: its size and its first and last ``window`` bytes."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(window))
        if size > window:
            f.seek(max(window, size - window))
            h.update(f.read(window))
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ShardMetadata:
    """The part of ``ParquetFile.metadata`` the stages read: the row count and a JSON-able footer
    (``to_dict()``, part of an output's input fingerprint)."""

    num_rows: int
    footer: dict

    def to_dict(self) -> dict:
        return self.footer


class InputShard(os.PathLike):
    """One input shard (see the module docstring). Subclasses set ``path``, ``parent``, ``name`` and
    implement :meth:`_batches`, :attr:`schema_arrow` and :attr:`metadata`."""

    path: Path
    parent: Path
    name: str

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path if self.name == self.path.name else self.path.parent / self.name)

    def stat(self) -> os.stat_result:
        return self.path.stat()

    @property
    def schema_arrow(self):
        raise NotImplementedError

    @property
    def metadata(self) -> ShardMetadata:
        raise NotImplementedError

    def _batches(self, batch_size: int, columns: list[str] | None) -> Iterator:
        raise NotImplementedError

    def iter_batches(self, batch_size: int = 1024, columns: list[str] | None = None) -> Iterator:
        """Rows in Arrow record batches of at most ``batch_size`` rows, as ``ParquetFile.iter_batches`` gives
        them; only ``columns`` when given (in that order). Never holds more than a batch of images at a time."""
        import pyarrow as pa

        for batch in self._batches(batch_size, list(columns) if columns is not None else None):
            yield from (batch.combine_chunks().to_batches() if isinstance(batch, pa.Table) else [batch])

    def read(self, columns: list[str] | None = None):
        """All rows (only ``columns``) as one Arrow table: for small columns (captions, labels)."""
        import pyarrow as pa

        schema = self.schema_arrow
        if columns is not None:
            schema = pa.schema([schema.field(c) for c in columns])
        parts = [pa.Table.from_batches([b]) for b in self.iter_batches(65536, columns)]
        return pa.concat_tables(parts).cast(schema) if parts else schema.empty_table()


class ParquetShard(InputShard):
    """A Parquet file read as it is (the Pick-a-Pic layout, a generate or label output).

    Raises UserError at construction for a file pyarrow cannot open."""

    def __init__(self, path: str | Path):
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.parent, self.name = self.path.parent, self.path.name
        try:
            self.file = pq.ParquetFile(self.path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for non-Parquet bytes
            raise UserError(f"{self.path} is not a readable Parquet file ({str(exc).splitlines()[0]})") from None

    @property
    def schema_arrow(self):
        return self.file.schema_arrow

    @property
    def metadata(self):
        return self.file.metadata

    def _batches(self, batch_size, columns):
        return self.file.iter_batches(batch_size=batch_size, columns=columns)

    def read(self, columns=None):
        return self.file.read(columns=columns)


class MappedParquetShard(ParquetShard):
    """A Parquet file whose rows a layout maps to the Pick-a-Pic shape batch by batch.

    ``mapper``: Arrow table of source columns -> table of standard + kept columns. ``sources``:
    the source columns a set of standard columns needs (None: all). ``identity``: the layout's
    settings, part of :attr:`metadata` (so an output made with other settings is refused)."""

    def __init__(self, path, mapper: Callable, sources: Callable, identity: dict):
        super().__init__(path)
        self.mapper, self.sources, self.identity = mapper, sources, identity
        self._schema = mapper(self.file.schema_arrow.empty_table()).schema

    @property
    def schema_arrow(self):
        return self._schema

    @property
    def metadata(self) -> ShardMetadata:
        meta = self.file.metadata
        return ShardMetadata(meta.num_rows, {**self.identity, "parquet": meta.to_dict()})

    def _batches(self, batch_size, columns):
        import pyarrow as pa

        wanted = None if columns is None else self.sources(columns)
        for batch in self.file.iter_batches(batch_size=batch_size, columns=wanted):
            table = self.mapper(pa.Table.from_batches([batch]))
            yield table if columns is None else table.select(columns)

    def read(self, columns=None):
        return InputShard.read(self, columns)


def column_or_nulls(table, name: str):
    """``table[name]``, or nulls where the caller did not read that column (a mapper's output column that
    is not selected, e.g. the images when only captions are asked for)."""
    import pyarrow as pa

    return table[name] if name in table.column_names else pa.nulls(table.num_rows)


def as_shard(f) -> InputShard:
    """``f`` as an :class:`InputShard`: itself, or a path read as a Parquet file (:class:`ParquetShard`)."""
    return f if isinstance(f, InputShard) else ParquetShard(f)

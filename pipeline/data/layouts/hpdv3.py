"""The HPDv3 layout (MizzenAI/HPDv3, MIT; HPDv3++ uses the same fields): JSON files of comparison records.

A record holds ``prompt``, ``path1`` (the preferred image), ``path2`` (the other one) and, kept
here as columns, ``model1``, ``model2``, ``confidence``, ``choice_dist`` (as JSON text) and
``source``. The files are ``train.json``, ``test.json``, ``all.json``, ...: a JSON list of records,
or JSON Lines, as the HPSv3 training code reads them (``json.load``, else one record per line);
image paths are relative to the JSON's folder, where users extract ``images.tar.gz.00`` ... ``.12``,
or to ``--image-root``. Sources: the dataset card https://huggingface.co/datasets/MizzenAI/HPDv3 and
the HPSv3 data handler (``HPDv3Handler``: ``preferred_path = path1``, ``rejected_path = path2``,
paths joined to ``os.path.dirname(json_path)``).

Label rule: ``path1`` is chosen, always (``label_0 = 1``, ``label_1 = 0``; ``jpg_0`` is ``path1``).
A file is read in shards of ``--records-per-shard`` records: one streaming pass notes where each
shard starts (:mod:`pipeline.data.layouts.json_records`), each shard then reads only its own records.
An image that was not extracted is a reject of ``precompute``/``label`` with the reason
``image file not readable (FileNotFoundError: <path>)``; the pair is never shifted.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import UserError

from .base import InputShard, ShardMetadata, file_digest, image_struct
from .json_records import JsonRecords

NAME = "hpdv3"
NEEDS = ("prompt", "path1", "path2")
KEPT = (("path1", "string"), ("path2", "string"), ("model1", "string"), ("model2", "string"),
        ("confidence", "float64"), ("choice_dist", "string"), ("source", "string"), ("record", "int64"))
RULE = "hpdv3: path1 is the preferred image (label_0 = 1, jpg_0 = path1); no record is a tie"
SUFFIXES = (".json", ".jsonl")


def schema():
    """The Arrow schema of an HPDv3 shard's rows: the Pick-a-Pic columns (images as Image structs naming
    the files), then :data:`KEPT`."""
    import pyarrow as pa

    fields = [("caption", pa.string()), ("jpg_0", image_struct()), ("jpg_1", image_struct()),
              ("label_0", pa.float64()), ("label_1", pa.float64())]
    return pa.schema(fields + [(n, getattr(pa, t)()) for n, t in KEPT])


def check_first_record(records: JsonRecords) -> None:
    """One line when the file's first record is not an HPDv3 record (a JSON that is something else)."""
    for _, first in records.read(limit=1):
        if not isinstance(first, dict) or not all(k in first for k in NEEDS):
            what = (f"its first record has the keys {', '.join(sorted(first)[:12]) or 'none'}"
                    if isinstance(first, dict) else f"its first record is a JSON {type(first).__name__}")
            raise UserError(f"{records.path} is not a list of HPDv3 records: {what}; the hpdv3 layout needs "
                            f"{', '.join(NEEDS)} in each record.")


def _text(value):
    return None if value is None else value if isinstance(value, str) else json.dumps(value)


def _number(value):
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def rows(records: list[tuple[int, object]], image_root: Path) -> dict:
    """Columns (the :func:`schema`'s) of ``(record number, record)`` pairs. A record that is not an
    object, or lacks a field, gives nulls there: a counted reject downstream, never a shifted pair."""
    cols: dict[str, list] = {name: [] for name in schema().names}
    for number, rec in records:
        rec = rec if isinstance(rec, dict) else {}
        for key, image in (("path1", "jpg_0"), ("path2", "jpg_1")):
            path = rec.get(key)
            cols[image].append({"bytes": None, "path": str(image_root / path) if isinstance(path, str) and path
                                else None})
        prompt = rec.get("prompt")
        cols["caption"].append(prompt if isinstance(prompt, str) else None)
        complete = all(isinstance(rec.get(k), str) and rec.get(k) for k in ("path1", "path2"))
        cols["label_0"].append(1.0 if complete else None)
        cols["label_1"].append(0.0 if complete else None)
        for name, kind in KEPT[:-1]:
            cols[name].append(_number(rec.get(name)) if kind == "float64" else _text(rec.get(name)))
        cols["record"].append(number)
    return cols


class JsonShard(InputShard):
    """Records ``[first, first + count)`` of one HPDv3 JSON file, starting at byte ``offset``."""

    def __init__(self, path: Path, offset: int | None, first: int, count: int, image_root: Path, identity: dict):
        self.path, self.offset, self.first, self.count = Path(path), offset, first, count
        self.parent, self.image_root, self.identity = image_root, image_root, identity
        self.name = f"{self.path.name}:{first}-{first + count}"

    @property
    def schema_arrow(self):
        return schema()

    @property
    def metadata(self) -> ShardMetadata:
        return ShardMetadata(self.count, {**self.identity, "file": self.path.name, "records": [self.first, self.count],
                                          "digest": file_digest(self.path)})

    def _batches(self, batch_size, columns):
        import pyarrow as pa

        sch = schema() if columns is None else pa.schema([schema().field(c) for c in columns])
        batch: list = []
        for n, (_, rec) in enumerate(JsonRecords(self.path).read(self.offset, self.count)):
            batch.append((self.first + n, rec))
            if len(batch) == batch_size:
                yield pa.table({c: v for c, v in rows(batch, self.image_root).items() if c in sch.names}, schema=sch)
                batch = []
        if batch:
            yield pa.table({c: v for c, v in rows(batch, self.image_root).items() if c in sch.names}, schema=sch)


def open_shards(files: list[Path], records_per_shard: int, image_root: str | None, identity: dict) -> list[JsonShard]:
    """One streaming pass over each file: the shards of ``records_per_shard`` records, in order.

    Raises UserError: a file that is not a list of HPDv3 records, invalid JSON, a missing ``--image-root``."""
    root_override = Path(image_root).expanduser() if image_root else None
    if root_override is not None and not root_override.is_dir():
        raise UserError(f"--image-root {image_root} is not a folder.")
    shards = []
    for f in files:
        records = JsonRecords(f)
        check_first_record(records)
        root = (root_override or f.parent).resolve()
        start, first, n = None, 0, 0
        for n, (offset, _) in enumerate(records.read()):
            if n % records_per_shard == 0:
                if n:
                    shards.append(JsonShard(f, start, first, n - first, root, identity))
                start, first = offset, n
        total = n + 1 if start is not None else 0
        if total > first:
            shards.append(JsonShard(f, start, first, total - first, root, identity))
    return shards

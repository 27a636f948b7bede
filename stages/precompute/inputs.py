"""Precompute's input: the two row shapes (:class:`InputShape`: preference pairs, unpaired examples), the
column and label checks made before anything is written, each row's classification (pair, tie, reject)
and the first pass that gives every caption to the first shard that uses it (:func:`caption_owners`)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.images import is_image_column
from pipeline.data.layouts import as_shard
from pipeline.data.prompts import text_id
from pipeline.errors import UserError
from pipeline.judges.scores import is_finite_score

REQUIRED_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")
UNPAIRED_COLUMNS = ("caption", "jpg", "label")


@dataclass(frozen=True)
class InputShape:
    """What one input row is: a preference pair, or one labelled image (Diffusion-KTO's unpaired data)."""

    name: str  # "pairs" | "unpaired": the latents' ``shape`` (pipeline.data.latent_shards)
    columns: tuple[str, ...]  # required input columns
    images: tuple[str, ...]  # image columns, in stored order for a pair after the chosen-first swap
    labels: tuple[str, ...]
    id_column: str  # the input's optional id column, and the output's id column
    description: str  # what such rows are, for messages: "<description> need <columns>"


PAIRS = InputShape("pairs", REQUIRED_COLUMNS, ("jpg_0", "jpg_1"), ("label_0", "label_1"), "pair_id",
                   "Pick-a-Pic-format preference pairs (e.g. the output of `mapo-data label`)")
UNPAIRED = InputShape("unpaired", UNPAIRED_COLUMNS, ("jpg",), ("label",), "example_id",
                      "unpaired examples (for --objective kto)")



def read_shard(f: Path):
    """An input shard (``pipeline.data.layouts``: any layout, read like a ParquetFile); a path is read as Parquet."""
    return as_shard(f)


def input_shape(files: list[Path]) -> InputShape:
    """Unpaired examples when the first file has a ``jpg`` column and no ``jpg_0``; pairs otherwise."""
    names = read_shard(files[0]).schema_arrow.names if files else []
    return UNPAIRED if "jpg" in names and "jpg_0" not in names else PAIRS


def check_columns(files: list[Path], shape: InputShape = PAIRS) -> dict:
    """Column check up front (one clear line) and a fingerprint of the input's Parquet footers.

    Unpaired labels are read whole here (one small column): a label other than 0/1 stops the run
    before anything is written."""
    h = hashlib.sha256()
    for f in files:
        meta = read_shard(f)
        names = meta.schema_arrow.names
        missing = [c for c in shape.columns if c not in names]
        if missing:
            raise UserError(_missing_columns_message(f, missing, shape))
        wrong = [f"{c} ({meta.schema_arrow.field(c).type})" for c in shape.images
                 if not is_image_column(meta.schema_arrow.field(c).type)]
        if wrong:
            raise UserError(f"{f} has image column(s) {', '.join(wrong)} of another type: precompute reads encoded "
                            "image bytes or datasets Image structs ({bytes, path}).")
        if shape is UNPAIRED:
            _check_unpaired_labels(f, meta)
        h.update(f.name.encode())
        h.update(json.dumps(meta.metadata.to_dict(), sort_keys=True, default=str).encode())
    return {"files": [str(f) for f in files], "fingerprint": h.hexdigest()[:16]}


def _missing_columns_message(f: Path, missing: list[str], shape: InputShape) -> str:
    """One line for either shape: what ``f`` was read as (:func:`input_shape`), what it needs, and what the
    other shape needs instead."""
    other = UNPAIRED if shape is PAIRS else PAIRS
    return (f"{f} lacks column(s) {', '.join(missing)}: {shape.description} need {', '.join(shape.columns)}; "
            f"{other.description} need {', '.join(other.columns)} instead.")


def _check_unpaired_labels(f: Path, meta) -> None:
    import pyarrow.types as pat

    kind = meta.schema_arrow.field("label").type
    if not (pat.is_integer(kind) or pat.is_floating(kind) or pat.is_boolean(kind)):
        raise UserError(f"{f}: column label is {kind}; unpaired examples need label 1 (desirable) or 0 (undesirable).")
    values = meta.read(columns=["label"]).column("label").to_pylist()
    for row, value in enumerate(values):
        if value is None or value not in (0, 1):
            raise UserError(f"{f}: column label holds {value!r} (row {row}); unpaired examples need label 1 "
                            "(desirable) or 0 (undesirable).")


def classify(caption, label_0, label_1) -> tuple[str, int | None]:
    """('pair', chosen column) | ('tie', None) | ('reject', None) from a row's text and labels."""
    if caption is None or not str(caption).strip():
        return "reject:empty caption", None
    if not (is_finite_score(label_0) and is_finite_score(label_1)):  # None, NaN or +-inf never decides
        return "reject:missing label", None
    if label_0 == label_1:
        return "tie", None
    return "pair", 0 if label_0 > label_1 else 1


def classify_row(shape: InputShape, caption, *labels) -> tuple[str, int | None]:
    """:func:`classify` for a pair; ('example', label) | ('reject:...', None) for an unpaired example
    (its label was checked up front)."""
    if shape is PAIRS:
        return classify(caption, *labels)
    if caption is None or not str(caption).strip():
        return "reject:empty caption", None
    return "example", int(labels[0])


def caption_owners(files: list[Path], shape: InputShape = PAIRS) -> list[tuple[list[str], set[str]]]:
    """For each shard, ``(the captions it encodes, those of them used by no later shard)``: a shard owns the
    captions whose first pair (or example) in the input is in it; a caption of the second set whose pairs the
    shard rejects all (images missing or corrupt) is left out, as no kept pair anywhere needs it."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    owned: list[list[str]] = []
    for k, f in enumerate(files):
        columns = ["caption", *shape.labels]
        table = read_shard(f).read(columns=columns)
        mine = []
        for cap, *labels in zip(*(table.column(c).to_pylist() for c in columns)):
            if classify_row(shape, cap, *labels)[0] not in ("pair", "example"):
                continue
            last[cid := text_id(cap)] = k
            if cid not in first:
                first[cid] = k
                mine.append(cap)
        owned.append(mine)
    return [(mine, {c for c in mine if last[text_id(c)] == k}) for k, mine in enumerate(owned)]


def row_id(row: dict, blobs: dict, shape: InputShape = PAIRS) -> str:
    """The input's pair_id (example_id), else a content id from the caption and the images' encoded bytes
    (so a pair gets the same id whether its images are stored as bytes or as datasets Image structs)."""
    given = row.get(shape.id_column)
    if given:
        return str(given)
    digest = hashlib.sha256()
    for key in shape.images:
        digest.update(hashlib.sha256(blobs[key] or b"").digest())
    return text_id(f"{row['caption']}\x00{digest.hexdigest()}")



def num_rows(path: Path) -> int:
    """The input shard's row count (its footer; any layout of :mod:`pipeline.data.layouts`)."""
    return read_shard(path).metadata.num_rows

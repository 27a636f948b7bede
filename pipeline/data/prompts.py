"""Prompt sources: text, JSONL, CSV, Parquet files, a folder of Parquet shards or a ``datasets`` dataset
-> stable-id prompts.

A folder is read as ``datasets.load_dataset`` reads it (:func:`pipeline.data.shards.input_split`): a
snapshot of the hub's ``yuvalkirstain/pickapic_v2_no_images`` (``data/train-00000-of-000NN-<hash>.parquet``
plus validation and test splits) gives the caption column of its ``--prompt-split``. Only that
column is read from each Parquet file, so a Pick-a-Pic snapshot WITH images reads no image bytes.
Public preference inputs (:mod:`pipeline.data.layouts`) give their prompts too: a vote-count or
chosen/rejected Parquet by its ``prompt`` column, an HPDv3 JSON (or a folder of them) by its
records' ``prompt``, WebDataset tars by each sample's caption member.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.data.textfiles import read_text
from pipeline.errors import UserError

DEFAULT_COLUMNS = ("caption", "prompt")
FILE_SUFFIXES = (".txt", ".jsonl", ".csv", ".parquet")


def text_id(text: str) -> str:
    """Stable id of a prompt or caption: the first 16 hex digits of sha256(text)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str


@dataclass
class PromptSet:
    prompts: list[Prompt]
    source: str
    dropped_empty: int = 0
    dropped_duplicates: int = 0
    counts: dict = field(default_factory=dict)

    def fingerprint(self) -> str:
        """Identifies the exact prompt list (order included): part of a stage's config identity."""
        h = hashlib.sha256()
        for p in self.prompts:
            h.update(p.id.encode())
        return h.hexdigest()[:16]


def _pick_column(columns: list[str], column: str | None, source: str) -> str:
    if column is not None:
        if column not in columns:
            raise UserError(f"Column '{column}' is not in {source} (columns: {', '.join(columns)}).")
        return column
    for name in DEFAULT_COLUMNS:
        if name in columns:
            return name
    raise UserError(
        f"{source} has no 'caption' or 'prompt' column; name one with --prompt-column (columns: {', '.join(columns)})."
    )


def _read_file(path: Path, column: str | None) -> list:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return read_text(path, "prompt file").splitlines()
    if suffix == ".jsonl":
        rows = []
        for n, line in enumerate(read_text(path, "prompt file").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{n} is not valid JSON ({exc.msg}).") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{n} is a JSON {type(row).__name__}, not an object; each line of a .jsonl "
                                'prompt file is an object such as {"caption": "a cat"}.')
            rows.append(row)
        if not rows:
            return []
        col = _pick_column(sorted({k for r in rows for k in r}), column, str(path))
        return [r.get(col) for r in rows]
    if suffix == ".parquet":
        return _read_parquet_column(path, column)
    if suffix == ".csv":
        import io

        import pyarrow.csv as pacsv

        # A CSV is text like any other prompt file: decoded here (BOM, UTF-16), handed to pyarrow as UTF-8.
        source = io.BytesIO(read_text(path, "prompt file").encode("utf-8"))
        try:
            table = pacsv.read_csv(source)
        except Exception as exc:  # pyarrow raises several error types for malformed files
            raise UserError(f"Could not read {path}: {str(exc).splitlines()[0]}") from None
        col = _pick_column(table.column_names, column, str(path))
        return table.column(col).to_pylist()
    raise UserError(f"Unsupported prompt file '{path}': use one of {', '.join(FILE_SUFFIXES)} or a dataset name.")


def _read_parquet_column(path: Path, column: str | None) -> list:
    """The prompt column of one Parquet file, read alone (a Pick-a-Pic shard's images stay on disk)."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        col = _pick_column(names, column, str(path))
        return pq.read_table(path, columns=[col]).column(col).to_pylist()
    except UserError:
        raise
    except Exception as exc:  # pyarrow raises several error types for malformed files
        raise UserError(f"Could not read {path}: {str(exc).splitlines()[0]}") from None


def _read_folder(path: Path, split: str, column: str | None) -> list:
    """The prompt column of a folder's ``split`` (a folder of one split: all of it), file by file in order."""
    from pipeline.data.shards import input_split

    _, files = input_split(path, split)
    return [value for f in files for value in _read_parquet_column(f, column)]


def _layout_captions(path: Path, split: str) -> list | None:
    """The prompts of an HPDv3 JSON or WebDataset tar input (a file or a folder), read record by record;
    None when ``path`` is not one (a ``.jsonl`` of ``{"caption": ...}`` objects is a prompt file)."""
    from pipeline.data.layouts import LayoutOptions, detect_layout, hpdv3, open_pairs, webdataset
    from pipeline.data.layouts.json_records import JsonRecords

    name = path.name.lower()
    if path.is_file():
        if name.endswith(hpdv3.SUFFIXES):
            try:
                first = next((rec for _, rec in JsonRecords(path).read(limit=1)), None)
            except UserError:  # not records at all: the prompt-file reader says what is wrong, in its words
                return None
            if not (isinstance(first, dict) and all(k in first for k in hpdv3.NEEDS)):
                return None
            layout = "hpdv3"
        elif name.endswith(webdataset.SUFFIXES):
            layout = "webdataset"
        else:
            return None
    else:
        try:
            layout = detect_layout(path, split)[0]
        except UserError:
            return None
        if layout not in ("hpdv3", "webdataset"):
            return None
    pairs = open_pairs(path, split, LayoutOptions(input_format=layout))
    return [c for shard in pairs.shards for batch in shard.iter_batches(4096, ["caption"])
            for c in batch.column(0).to_pylist()]


def _read_dataset(name: str, split: str, column: str | None) -> list:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # offline / missing dataset / bad split all surface differently
        raise UserError(
            f"Could not load dataset '{name}' (split '{split}'): {str(exc).strip().splitlines()[0][:200]}. "
            "Pass a local prompt file or make the dataset available in the local cache."
        ) from None
    col = _pick_column(ds.column_names, column, f"dataset '{name}'")
    return ds[col]


def load_prompts(
    source: str,
    *,
    column: str | None = None,
    split: str = "train",
    keep_duplicates: bool = False,
    limit: int | None = None,
) -> PromptSet:
    """Read prompts, dropping empty ones and (unless asked) duplicates, keeping first-seen order.

    ``source``: a file (.txt, .jsonl, .csv, .parquet), a folder of Parquet shards (its ``split``, found
    as ``datasets`` finds splits), a public preference input (an HPDv3 .json/.jsonl, WebDataset .tar
    shards, or a folder of them: their captions), or a ``datasets`` name (its ``split``). ``column`` names the prompt
    column (default ``caption``, else ``prompt``).

    Raises:
        UserError: a missing or unreadable source, a missing column or split, no usable prompt.
    """
    path = Path(source).expanduser()
    if path.exists():
        raw = _layout_captions(path, split)
        if raw is None:
            raw = _read_folder(path, split, column) if path.is_dir() else _read_file(path, column)
    elif (path.suffix.lower() in FILE_SUFFIXES or "/" not in source or source.startswith(("/", ".", "~"))
          or source.count("/") > 1):  # a hub dataset id is "org/name"; anything else is a path
        raise UserError(f"Prompt file '{source}' does not exist.")
    else:
        raw = _read_dataset(source, split, column)
    if limit is not None and limit < 1:
        raise UserError("--limit must be at least 1.")
    prompts: list[Prompt] = []
    seen: dict[str, int] = {}
    empty = dupes = 0
    for value in raw:
        text = value.strip() if isinstance(value, str) else ""
        if not text:
            empty += 1
            continue
        pid = text_id(text)
        if pid in seen:
            if not keep_duplicates:
                dupes += 1
                continue
            # A kept repeat gets its own id (hence its own seeds and pair id): not a copy of the first.
            seen[pid] += 1
            prompts.append(Prompt(f"{pid}-{seen[pid]}", text))
        else:
            seen[pid] = 0
            prompts.append(Prompt(pid, text))
        if limit is not None and len(prompts) >= limit:
            break
    if not prompts:
        raise UserError(f"No usable prompt in '{source}' ({empty} empty, {dupes} duplicate).")
    return PromptSet(prompts, source, dropped_empty=empty, dropped_duplicates=dupes)

"""Sharded stage outputs: deterministic names, atomic writes, a manifest, resume and refusal.

Layout of an output folder::

    manifest.json                       resolved config, shard count, completed shards, counts
    data/train-KKKKK-of-NNNNN.parquet   the shards (Hugging Face naming, one split: ``train``
                                        unless the stage names another, e.g. label of a test split)
    rejects/train-KKKKK-of-NNNNN.parquet  optional per-shard side tables (e.g. dropped rows)
    .stats/train-KKKKK-of-NNNNN.json    per-shard counters and timings

A shard is complete exactly when its ``data/`` file exists: every file of a shard is written
under a temporary name and renamed into place, side tables and stats first, the data file
last. A killed run therefore leaves no truncated shard, and a rerun redoes only what is missing.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Protocol, runtime_checkable

from pipeline.data.atomic import temporary_name, write_json_atomic
from pipeline.data.output_folder import OutputFolder
from pipeline.errors import UserError, writing_output

MANIFEST = "manifest.json"
DATA_DIR = "data"
STATS_DIR = ".stats"
SPLIT = "train"
_OWNED = (DATA_DIR, "rejects", STATS_DIR, MANIFEST, "README.md")


def shard_name(k: int, n: int, split: str = SPLIT) -> str:
    """Shard k of n's file stem, the Hugging Face way: ``train-00003-of-00012``."""
    return f"{split}-{k:05d}-of-{n:05d}"


def shard_ranges(num_items: int, shard_size: int) -> list[range]:
    """Shard k holds items [k*size, (k+1)*size): fixed, whatever runs it."""
    if shard_size < 1:
        raise UserError("--shard-size must be at least 1.")
    return [range(s, min(s + shard_size, num_items)) for s in range(0, num_items, shard_size)]


@runtime_checkable
class Describable(Protocol):
    """Settings that decide the bytes a stage writes (a recipe, a labeler, scorer options).

    ``describe()`` returns a JSON-serialisable dict that goes into a manifest's ``identity`` (and
    :func:`config_fingerprint`): a rerun with other settings is refused, one with the same resumes.
    """

    def describe(self) -> dict: ...


@runtime_checkable
class Fingerprinted(Protocol):
    """An input whose content decides the output (a prompt set, input shard files, a training output):
    ``fingerprint()`` is a short string that changes when the content does."""

    def fingerprint(self) -> str: ...


def config_fingerprint(identity: dict) -> str:
    """16 hex digits of SHA-256 over ``identity`` as sorted JSON (built from :class:`Describable` and
    :class:`Fingerprinted` parts)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_manifest(root: Path) -> dict | None:
    path = Path(root) / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path} is corrupt; remove the folder or pass --overwrite.") from None


def data_files(root: Path) -> list[Path]:
    return sorted((Path(root) / DATA_DIR).glob("*.parquet"))


class ShardedOutput:
    """One stage's output folder. ``identity`` is the config that determines the bytes written.

    ``split`` names the shards (``<split>-KKKKK-of-NNNNN``); a split other than ``train`` joins the
    identity, so outputs made before the option existed keep their fingerprint and still resume.
    """

    def __init__(self, root: str | Path, stage: str, identity: dict, num_shards: int, config: dict | None = None,
                 split: str = SPLIT):
        self.root = Path(root)
        self.stage = stage
        self.split = split
        self.identity = identity if split == SPLIT else {**identity, "split": split}
        self.num_shards = num_shards
        self.config = config if config is not None else identity
        self.fingerprint = config_fingerprint({"stage": stage, "num_shards": num_shards, **self.identity})

    # -- paths -------------------------------------------------------------------------
    def path(self, k: int, subdir: str = DATA_DIR) -> Path:
        return self.root / subdir / f"{shard_name(k, self.num_shards, self.split)}.parquet"

    def stats_path(self, k: int) -> Path:
        return self.root / STATS_DIR / f"{shard_name(k, self.num_shards, self.split)}.json"

    def is_complete(self, k: int) -> bool:
        return self.path(k).exists()

    def pending(self, shards: list[int]) -> list[int]:
        return [k for k in shards if not self.is_complete(k)]

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def folder(self) -> OutputFolder:
        return OutputFolder(self.root, _OWNED, MANIFEST, "mapo-data")

    def check(self, overwrite: bool = False, *, partial: bool = False) -> None:
        """Refuse now, writing nothing, if :meth:`prepare` would: every stage calls this before loading
        models, so a mismatched output folder costs no model import.

        ``partial``: ``identity`` holds only the keys known before the models load (label: all but the
        labeler's own description, which needs its loaded classifier or judges); refuse when the folder's
        identity differs in one of them. The full identity is checked again by :meth:`prepare`.

        Raises:
            UserError: the folder holds another configuration (names the differing keys; not with
                ``overwrite``), or is not a mapo-data output (:class:`OutputFolder`).
        """
        self.folder.refuse_foreign()
        manifest = read_manifest(self.root)
        if manifest is None or overwrite or (manifest.get("fingerprint") == self.fingerprint and not partial):
            return
        old = {**manifest.get("identity", {}), "stage": manifest.get("stage"), "num_shards": manifest.get("num_shards")}
        new = {**self.identity, "stage": self.stage, "num_shards": self.num_shards}
        if old["stage"] and old["stage"] != self.stage:  # another stage's output: its keys would all differ
            raise UserError(f"{self.root} holds a mapo-data {old['stage']} output, not a {self.stage} one. Use a new "
                            "--output, or pass --overwrite to replace it.")
        # Partial: the caller's known keys, and this class's own (the split is in the identity only when it is not
        # the default: a folder of another split must differ in "split", present or not).
        keys = sorted(set(new) | {"split", "stage", "num_shards"}) if partial else None
        self.folder.refuse_differences(old, new, keys=keys, differ=not partial, remedy=(
            "Use a new --output, rerun with the original options to resume, or pass --overwrite."))

    def finished(self, overwrite: bool = False) -> bool:
        """True when a rerun has nothing to do: this very configuration's manifest, every shard complete (and
        no ``overwrite``). Decided from the files alone, so a stage checks it before any model loads or is
        even looked up: a finished rerun returns in seconds."""
        if overwrite:
            return False
        manifest = read_manifest(self.root)
        return (manifest is not None and manifest.get("fingerprint") == self.fingerprint
                and all(self.is_complete(k) for k in range(self.num_shards)))

    def prepare(self, overwrite: bool = False) -> None:
        """Check (or create) the manifest. Call on the main process before any worker writes."""
        self.check(overwrite)
        manifest = read_manifest(self.root)
        with writing_output(self.root):  # an unwritable or full output folder: one error line naming it
            if manifest is None or manifest.get("fingerprint") != self.fingerprint:
                self.folder.clear()  # another configuration's (--overwrite), or empty owned folders
                self._write_manifest(status="running", completed=[], totals={})  # the marker first, then the rest
            (self.root / DATA_DIR).mkdir(parents=True, exist_ok=True)
            (self.root / STATS_DIR).mkdir(parents=True, exist_ok=True)

    def start(self, proc, overwrite: bool = False) -> tuple[list[int], list[int]]:
        """Prepare on the main process, wait for all, and claim this process's shards.

        Returns (this process's shards, those of them still to do); stale temporaries a
        killed run left for the shards to do are removed.
        """
        from pipeline.runtime.distributed import wait_for_everyone

        if proc.is_main:
            self.prepare(overwrite=overwrite)
        wait_for_everyone()
        mine = proc.my_shards(list(range(self.num_shards)))
        todo = self.pending(mine)
        self.remove_stale_temporaries(todo)
        return mine, todo

    def _write_manifest(self, status: str, completed: list[int], totals: dict, extra: dict | None = None) -> None:
        """Raises :class:`~pipeline.errors.OutputNotWritable` (one line naming the folder) when it cannot be written."""
        with writing_output(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
        manifest = {
            "stage": self.stage,
            "format_version": 1,
            "fingerprint": self.fingerprint,
            "identity": self.identity,
            "config": self.config,
            "num_shards": self.num_shards,
            "completed_shards": completed,
            "status": status,
            "totals": totals,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        manifest.update(extra or {})
        write_json_atomic(self.root / MANIFEST, manifest)

    def remove_stale_temporaries(self, shards: list[int]) -> None:
        """Delete temporary files a killed run left for these shards (this process's only)."""
        names = {shard_name(k, self.num_shards, self.split) for k in shards}
        for sub in (DATA_DIR, "rejects", STATS_DIR):
            d = self.root / sub
            if d.is_dir():
                for p in d.glob(".*.tmp-*"):
                    if any(p.name.startswith(f".{n}.") for n in names):
                        p.unlink(missing_ok=True)

    def write_shard(self, k: int, tables: dict, stats: dict, compression: str = "zstd",
                    row_group_size: int | None = None) -> None:
        """Write shard k: ``tables`` maps subdir -> pyarrow Table and must include ``data``.

        Pass ``compression="none"`` for already-compressed payloads (PNG/JPEG bytes), and a
        ``row_group_size`` (rows) where readers should hold only part of a large shard at a time.

        Raises :class:`~pipeline.errors.OutputNotWritable` when the file cannot be written; the temporary
        files written so far are removed (the shard stays to do).
        """

        if DATA_DIR not in tables:
            raise ValueError("write_shard needs a 'data' table")
        staged: list = []
        try:
            # Permission, read-only, full disk: one error line naming the shard (not its temporary).
            with writing_output(self.path(k), name_path=True):
                self._write_shard(k, tables, stats, compression, row_group_size, staged)
        except BaseException:
            for _, tmp, _ in staged:  # nothing half-written left behind (renamed ones are gone already)
                tmp.unlink(missing_ok=True)
            raise

    def _write_shard(self, k: int, tables: dict, stats: dict, compression: str, row_group_size: int | None,
                     staged: list) -> None:
        import pyarrow.parquet as pq

        for sub, table in tables.items():
            final = self.path(k, sub)
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = temporary_name(final)
            staged.append((sub, tmp, final))
            if table.num_rows == 0:
                # No row group at all: readers such as `datasets` fail on a zero-row row group
                # ("BatchSize must be greater than 0") but skip a file with none.
                pq.ParquetWriter(tmp, table.schema).close()
            else:
                pq.write_table(table, tmp, compression=compression if sub == DATA_DIR else "zstd",
                               row_group_size=row_group_size)
        write_json_atomic(self.stats_path(k), stats)
        # The data file is renamed last: its presence is the completion marker.
        for sub, tmp, final in sorted(staged, key=lambda s: s[0] == DATA_DIR):
            os.replace(tmp, final)

    def finalize(self, extra: dict | None = None) -> dict:
        """Record completed shards and summed counters. Call on the main process after a barrier."""
        completed = [k for k in range(self.num_shards) if self.is_complete(k)]
        totals: dict = {}
        for k in completed:
            p = self.stats_path(k)
            if p.exists():
                add_counts(totals, json.loads(p.read_text()))
        status = "complete" if len(completed) == self.num_shards else "partial"
        self._write_manifest(status, completed, totals, extra)
        return totals


def add_counts(total: dict, stats: dict) -> None:
    """Add ``stats``' numeric counters into ``total`` (nested dicts too; booleans and text are skipped)."""
    for key, value in stats.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            total[key] = total.get(key, 0) + value
        elif isinstance(value, dict):
            add_counts(total.setdefault(key, {}), value)


def folder_splits(folder: str | Path, extensions: tuple[str, ...] = (".parquet",)) -> dict[str, list[Path]]:
    """A folder's Parquet files (or files of other ``extensions``) by split, found as
    ``datasets.load_dataset(folder)`` finds them.

    Follows ``datasets.data_files.get_data_patterns`` (the hub's conventions, in its order): shard
    names ``data/<split>-00000-of-00004[-<hash>].parquet`` (a Pick-a-Pic snapshot, our own outputs),
    then split folders (``train/``, ``data/test/``), then split keywords in file names
    (``train.parquet``, ``test_0.parquet``; ``validation_unique.parquet`` counts as ``validation``;
    HPDv3's ``train.json`` / ``test.json``), else every file as one ``train`` split. Only files whose
    names end with one of ``extensions`` are kept; a split without one is left out, so the result
    may be empty. Paths start with ``folder`` as given, sorted per split.

    Raises UserError when the shard names hold a split name ``datasets`` refuses.
    """
    from datasets.data_files import EmptyDatasetError, get_data_patterns, resolve_pattern

    folder = Path(folder)
    base = os.path.abspath(folder)
    # The folder's own path is not part of any pattern: its glob characters are escaped.
    escaped = glob.escape(base)
    try:
        patterns = get_data_patterns(escaped)
    except EmptyDatasetError:
        return {}
    except ValueError as exc:  # e.g. data/my-split-00000-of-00001.parquet: not a valid split name
        raise UserError(f"{folder}: {exc} Pass a glob of the files to use.") from None
    found: dict[str, list[Path]] = {}
    for split, split_patterns in patterns.items():
        names: set[str] = set()
        for pattern in split_patterns:
            try:
                names.update(resolve_pattern(pattern, escaped))
            except FileNotFoundError:  # datasets lists every keyword pattern of a split; most match nothing
                continue
        files = sorted(os.path.relpath(n, base) for n in names if _has_extension(n, extensions))
        if files:
            found[str(split)] = [folder / f for f in files]
    return found


def _has_extension(name: str, extensions: tuple[str, ...]) -> bool:
    return str(name).lower().endswith(extensions)


GLOB_CHARS = "*?["


def input_kind(spec: str | Path, name: str = "Input", hint: str = "") -> str:
    """What the input ``spec`` is: ``"file"``, ``"folder"`` or ``"glob"`` (one matching at least one path).

    The one check every stage that reads an input makes first (``precompute``, ``label``, ``inspect``
    through :func:`split_files`, ``pipeline.data.layouts.open_pairs`` and their own calls), so a file, a
    folder and a glob are told apart, and refused, the same way everywhere. A path that exists is
    taken as itself even when its name holds glob characters (``data[1].parquet``); otherwise a
    name with ``*``, ``?`` or ``[`` is a pattern, expanded as :func:`glob.glob` expands it (``~`` too).

    Raises:
        UserError: one line, ``{name} '{spec}' does not exist`` (a glob: ``matches no file``), then
            ``hint`` (what the stage reads).
    """
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        return "folder"
    if path.exists():
        return "file"
    if any(ch in text for ch in GLOB_CHARS):
        if glob.glob(str(path)):
            return "glob"
        raise UserError(f"{name} '{spec}' matches no file{hint}.")
    raise UserError(f"{name} '{spec}' does not exist{hint}.")


def split_files(spec: str | Path, split: str = SPLIT, extensions: tuple[str, ...] = (".parquet",),
                other_kinds: tuple[str, ...] = ()) -> tuple[str, list[Path]]:
    """:func:`input_split`'s search for files with one of ``extensions``, an empty list where there are none.

    A file is taken as given unless its name has one of ``other_kinds``' extensions (a file of
    another kind); a glob keeps its matches with ``extensions``.

    Raises UserError when the input does not exist (:func:`input_kind`), or a folder holds several
    splits but not ``split``.
    """
    kind = input_kind(spec)
    path = Path(str(spec)).expanduser()
    if kind == "glob":
        return split, sorted(Path(p) for p in glob.glob(str(path)) if _has_extension(p, extensions))
    if kind == "folder":
        found = folder_splits(path, extensions)
        if len(found) > 1 and split not in found:
            raise UserError(
                f"{spec} holds the splits {', '.join(found)} but no '{split}'; pass --split with one of them."
            )
        return (split, found[split]) if split in found else next(iter(found.items()), (split, []))
    return split, ([] if _has_extension(path.name, other_kinds) else [path])


def input_split(spec: str | Path, split: str = SPLIT) -> tuple[str, list[Path]]:
    """The Parquet files a stage reads and the split they belong to: from a folder, a file or a glob.

    A folder's splits follow ``datasets.data_files.get_data_patterns`` (see ``folder_splits``).
    A folder with one split gives all its files, whatever that split is called (our own outputs,
    ``data/train-KKKKK-of-NNNNN.parquet``, a bare ``pairs.parquet``); one with several gives only
    ``split``'s, so a Pick-a-Pic snapshot's validation and test pairs never leak into training
    data. A file or a glob is taken as given and said to be ``split``. Other input layouts (JSON,
    tar shards) are found by :func:`pipeline.data.layouts.open_pairs`, with :func:`split_files`.

    Raises UserError when the input does not exist, holds no Parquet file, or holds several splits
    but not ``split`` (the message names the splits found).
    """
    name, files = split_files(spec, split)
    if not files:
        raise UserError(f"No Parquet files in '{spec}' (a folder is searched as datasets.load_dataset searches it).")
    return name, files


def input_shard_files(spec: str | Path, split: str = SPLIT) -> list[Path]:
    """The Parquet files ``input_split`` finds for ``spec`` (same rules, same UserErrors)."""
    return input_split(spec, split)[1]


def check_output_apart(output: str | Path, inputs: list[Path]) -> None:
    """Refuse an output folder that holds an input file (its --overwrite would delete the input)."""
    out = Path(output).expanduser().resolve()
    for f in inputs:
        if out in Path(f).expanduser().resolve().parents:
            raise UserError(f"--output {output} holds the input file {f}; choose a separate folder.")

"""Writes that are never half-done: a temporary name in the same folder, then ``os.replace``.

``os.replace`` within one file system is atomic on POSIX and Windows, so a reader (or a resumed run)
sees either the old file or the whole new one, never a truncated file after a kill. Temporary names
are ``.<name>.tmp-<pid><suffix>``: hidden, per process, and recognisable by
:meth:`pipeline.data.shards.ShardedOutput.remove_stale_temporaries`.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

from pipeline.errors import writing_output


def temporary_name(path: str | Path, keep_suffix: bool = False) -> Path:
    """The temporary sibling of ``path`` this process writes first (``keep_suffix``: ends with the same
    extension, for writers that pick the format from it, like PIL or matplotlib)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}" + (path.suffix if keep_suffix else ""))


@contextlib.contextmanager
def atomic_write(path: str | Path, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on any error it is removed.

    Works for a file or a folder written at the temporary path (a folder replaces only a missing or
    empty ``path``: ``os.replace`` semantics). The parent folder is created.

    Raises:
        pipeline.errors.OutputNotWritable: permission denied, a read-only file system or a full disk, while
            writing (the message names the file; nothing is left behind).
    """
    path = Path(path)
    with writing_output(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path, keep_suffix)
    try:
        with writing_output(path, name_path=True):  # permission, read-only, full disk: one error line naming the file
            yield tmp
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj, *, sort_keys: bool = True) -> None:
    """Write ``obj`` as indented JSON (values JSON cannot hold become strings) atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=str) + "\n")

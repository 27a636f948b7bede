"""``shapes-sdxl``: the miniature world's pretrained base model, committed with the project.

The folder ``pipeline/world/shapes-sdxl/`` is a standard diffusers SDXL pipeline folder written by
:mod:`pipeline.world.pretrain` (``make world-model`` rebuilds it). Its ``checksums.json`` holds the
SHA-256 of every other file; :func:`shapes_sdxl_path` checks them (once per process, ~0.1 s) before
anything loads the folder, so a truncated checkout, a Git LFS pointer or a hand-edited config is one
clear error instead of a model that silently generates something else.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from pipeline.errors import UserError
from pipeline.models.builtin import BuiltinModel, register_model
from pipeline.models.weights_files import reading_weights

NAME = "shapes-sdxl"
FOLDER = Path(__file__).resolve().parent / NAME
CHECKSUMS = "checksums.json"
REBUILD = "rebuild it with `make world-model` or restore it with `git checkout -- pipeline/world/shapes-sdxl`"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(folder: Path) -> dict[str, str]:
    """Record the SHA-256 of every file under ``folder`` (but the record itself) in ``checksums.json``."""
    sums = {p.relative_to(folder).as_posix(): file_sha256(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != CHECKSUMS}
    (folder / CHECKSUMS).write_text(json.dumps(sums, indent=1, sort_keys=True) + "\n")
    return sums


def verify_checksums(folder: Path) -> None:
    """Raise :class:`UserError` naming the first missing or changed file, or an unreadable record
    (:class:`~pipeline.models.weights_files.WeightsFileError`)."""
    record = folder / CHECKSUMS
    if not record.is_file():
        raise UserError(f"built-in {NAME} is incomplete: {record} is missing; {REBUILD}")
    with reading_weights(record, f"built-in {NAME}", fix=REBUILD[0].upper() + REBUILD[1:]):
        sums = json.loads(record.read_bytes().decode("utf-8"))
    if not isinstance(sums, dict):
        raise UserError(f"built-in {NAME}: {record} is not a JSON object of file checksums; {REBUILD}")
    for rel, expected in sums.items():
        path = folder / rel
        if not path.is_file():
            raise UserError(f"built-in {NAME} is incomplete: {path} is missing; {REBUILD}")
        actual = file_sha256(path)
        if actual != expected:
            raise UserError(f"built-in {NAME} file {path} does not match its checksum (sha256 {actual[:12]}..., "
                            f"expected {expected[:12]}...): it was changed or is a Git LFS pointer; {REBUILD}")


@lru_cache(maxsize=1)
def shapes_sdxl_path() -> Path:
    """The verified folder of ``shapes-sdxl`` (what ``from_pretrained`` loads)."""
    verify_checksums(FOLDER)
    return FOLDER


# The world's built-in models, registered with the core's model registry (this module is the world's model plugin,
# found through the ``mapo_tools.models`` entry point; no core module imports the world): one line per model.
register_model(BuiltinModel(NAME, family="sdxl", kind="folder", path=shapes_sdxl_path,
                            example_prompt="a red circle at the top left"))

"""``shapes-sdxl`` and ``shapes-sd3``: the miniature world's pretrained base models, committed with the project.

The folder ``world/shapes-sdxl/`` is a standard diffusers SDXL pipeline folder written by
:mod:`world.pretrain` (``make world-model`` rebuilds it); ``world/shapes-sd3/`` is a
standard diffusers SD3 pipeline folder (no T5) written by ``python -m world.pretrain --family sd3``
(``make world-model-flow``). Each folder's ``checksums.json`` holds the SHA-256 of every other file;
:func:`world_model_path` checks them (once per process and model, ~0.1 s) before anything loads the folder,
so a truncated checkout, a Git LFS pointer or a hand-edited config is one clear error instead of a model that
silently generates something else.
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
# Each committed world model's make target (what rebuilds its folder).
REBUILD_TARGETS = {"shapes-sdxl": "world-model", "shapes-sd3": "world-model-flow"}
WORLD_MODELS = tuple(REBUILD_TARGETS)  # the world's committed base models, by name


def _rebuild_hint(name: str) -> str:
    return (f"rebuild it with `make {REBUILD_TARGETS.get(name, 'world-model')}` or restore it with "
            f"`git checkout -- world/{name}`")


REBUILD = _rebuild_hint(NAME)


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


def verify_checksums(folder: Path, name: str = NAME) -> None:
    """Raise :class:`UserError` naming the first missing or changed file, or an unreadable record
    (:class:`~pipeline.models.weights_files.WeightsFileError`); ``name`` is the built-in the folder holds."""
    rebuild = _rebuild_hint(name)
    record = folder / CHECKSUMS
    if not record.is_file():
        raise UserError(f"built-in {name} is incomplete: {record} is missing; {rebuild}")
    with reading_weights(record, f"built-in {name}", fix=rebuild[0].upper() + rebuild[1:]):
        sums = json.loads(record.read_bytes().decode("utf-8"))
    if not isinstance(sums, dict):
        raise UserError(f"built-in {name}: {record} is not a JSON object of file checksums; {rebuild}")
    for rel, expected in sums.items():
        path = folder / rel
        if not path.is_file():
            raise UserError(f"built-in {name} is incomplete: {path} is missing; {rebuild}")
        actual = file_sha256(path)
        if actual != expected:
            raise UserError(f"built-in {name} file {path} does not match its checksum (sha256 {actual[:12]}..., "
                            f"expected {expected[:12]}...): it was changed or is a Git LFS pointer; {rebuild}")


@lru_cache(maxsize=None)
def world_model_path(name: str) -> Path:
    """The verified folder of the committed world model ``name`` (a key of :data:`REBUILD_TARGETS`: what
    ``from_pretrained`` loads); :class:`UserError` when a file is missing or changed."""
    if name not in REBUILD_TARGETS:
        raise UserError(f"unknown world model '{name}'; known: {', '.join(REBUILD_TARGETS)}")
    folder = FOLDER.parent / name
    verify_checksums(folder, name)
    return folder


def shapes_sdxl_path() -> Path:
    """The verified folder of ``shapes-sdxl`` (what ``from_pretrained`` loads)."""
    return world_model_path(NAME)


# The world's built-in models, registered with the core's model registry (this module is the world's model plugin,
# found through the ``mapo_tools.models`` entry point; no core module imports the world): one line per model.
register_model(BuiltinModel(NAME, family="sdxl", kind="folder", path=shapes_sdxl_path,
                            example_prompt="a red circle at the top left"))
register_model(BuiltinModel("shapes-sd3", family="sd3", kind="folder", path=lambda: world_model_path("shapes-sd3"),
                            example_prompt="a red circle at the top left"))

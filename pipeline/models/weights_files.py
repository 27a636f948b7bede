"""Unreadable weights files: one ``error:`` line naming the file, not a library traceback.

A truncated download, an HTML page saved under a weights file's name, an empty file, a Git LFS
pointer or a config that is not JSON each make a different library raise a different exception
(``SafetensorError``, ``UnpicklingError``, ``EOFError``, ``RuntimeError: PytorchStreamReader``,
``OSError``, ``JSONDecodeError``, onnxruntime's ``InvalidProtobuf`` ...), often without the file's
name. Every loader of weights runs inside :func:`reading_weights`, which turns those into one
:class:`WeightsFileError` naming the file, and lets every other exception through unchanged.

How an exception is recognised (found by corrupting real files, see
``tests/bad_inputs/test_weights_files.py``):

- types only a bad file raises (:data:`_BAD_FILE_TYPES`, onnxruntime's parse errors), anywhere in
  the exception's cause/context chain (diffusers wraps them in ``OSError``);
- ``OSError``, ``RuntimeError`` and ``ValueError`` also mean "file not found", "out of memory" or
  "wrong argument", so they count only when a cheap check of the file (:func:`diagnose_file`)
  finds it unreadable.

The file is the one the exception names, else the one given, else the first unreadable file in
the given folder (a diffusers or transformers folder, a hub id's cached snapshot).
"""
from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipeline.errors import UserError, one_line

# Raised by the loaders only when a file's bytes are not what its format says.
_BAD_FILE_TYPES: tuple[type[BaseException], ...] = (
    pickle.UnpicklingError,  # torch.load of HTML, an LFS pointer, another pickle (weights_only)
    EOFError,  # torch.load / pickle of an empty file
    json.JSONDecodeError,  # a config.json / tokenizer.json that is not JSON
    UnicodeDecodeError,  # a binary file where JSON text was expected
    zipfile.BadZipFile,
)
# safetensors and onnxruntime raise their own classes (not subclasses of the above); matched by
# module and name so that neither has to be imported here.
_BAD_FILE_CLASSES = {
    "safetensors": {"SafetensorError"},
    "onnxruntime": {"InvalidProtobuf", "InvalidGraph", "InvalidArgument"},
}
# These also mean a bad file, but not only: they count when the file checks as unreadable.
_AMBIGUOUS_TYPES: tuple[type[BaseException], ...] = (OSError, RuntimeError, ValueError)
_AMBIGUOUS_CLASSES = {"onnxruntime": {"Fail"}}

# Suffixes checked when a folder is searched for the unreadable file.
_TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_CHECKED_SUFFIXES = (".safetensors", ".json", ".onnx", *_TORCH_SUFFIXES)
DEFAULT_FIX = "Download or save it again"
_PATH_IN_MESSAGE = re.compile(r"""(?:^|[\s'"`(=])((?:/|~/)[^'"`\s,;()]+)""")


class WeightsFileError(UserError):
    """A model, weights or config file exists but cannot be read (truncated, empty, an HTML page,
    a Git LFS pointer, another format). The message names the file."""


def _matches(exc: BaseException, classes: dict[str, set[str]]) -> bool:
    cls = type(exc)
    return any(cls.__module__.startswith(mod) and cls.__name__ in names for mod, names in classes.items())


def _chain(exc: BaseException, limit: int = 8) -> list[BaseException]:
    """``exc`` and what caused it (explicit cause first, else the exception being handled)."""
    out: list[BaseException] = []
    while exc is not None and len(out) < limit and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _is_bad_file_error(exc: BaseException) -> bool:
    return isinstance(exc, _BAD_FILE_TYPES) or _matches(exc, _BAD_FILE_CLASSES)


def _head(path: Path, size: int = 512) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(size)


def diagnose_file(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be a readable model file, in a few words, or None if it looks fine.

    Cheap checks only (headers, never the whole file): empty, an HTML page, a Git LFS pointer,
    a safetensors header that does not cover the file, JSON that does not parse, a torch zip
    archive without its end. A file that cannot be opened at all is not diagnosed (None): a
    missing file is the loaders' "not found" case.
    """
    path = Path(path)
    try:
        if not path.is_file():
            return None
        if path.stat().st_size == 0:
            return "the file is empty"
        head = _head(path)
    except OSError:
        return None
    start = head.lstrip().lower()
    if start.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in start[:200]:
        return "it is an HTML page, not the file (a web page saved in place of a download?)"
    if start.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer, not the file itself (run `git lfs pull`)"
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _diagnose_safetensors(path)
    if suffix == ".json":
        try:
            json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            return "not valid JSON (not UTF-8 text)"
        except json.JSONDecodeError as exc:
            return f"not valid JSON ({exc})"
        return None
    if suffix in _TORCH_SUFFIXES:
        if head.startswith(b"PK\x03\x04"):  # torch.save's zip archive
            return None if zipfile.is_zipfile(path) else (
                "an incomplete zip archive (torch.save's format): it has no end"
            )
        if not head.startswith(b"\x80"):  # nor a pickle (the legacy torch format)
            return "not a PyTorch file (neither the zip archive torch.save writes nor a pickle)"
    return None


def _diagnose_safetensors(path: Path) -> str | None:
    try:
        from safetensors import safe_open
    except ImportError:  # pragma: no cover - safetensors ships with diffusers and transformers
        return None
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except Exception as exc:  # noqa: BLE001 - safetensors' own error type; anything here means unreadable
        if not _matches(exc, _BAD_FILE_CLASSES):
            return None
        text = one_line(exc, 120)
        if "not fully covered" in text or "invalid header length" in text:
            return f"an incomplete safetensors file ({text})"
        return f"not a safetensors file ({text})"
    return None


def find_unreadable_file(folder: str | os.PathLike) -> tuple[Path, str] | None:
    """The first model file under ``folder`` that :func:`diagnose_file` rejects, with the reason.

    Looks at weights, config and ONNX files (``.safetensors``, ``.bin``, ``.pt``, ``.pth``,
    ``.ckpt``, ``.pkl``, ``.json``, ``.onnx``), skipping hidden folders; None when all look fine.
    """
    root = Path(folder)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.lower().endswith(_CHECKED_SUFFIXES):
                reason = diagnose_file(Path(dirpath) / name)
                if reason:
                    return Path(dirpath) / name, reason
    return None


def _local_source(source) -> Path | None:
    """``source`` as a local file or folder: a path, or a hub id's snapshot in the local cache."""
    if source is None:
        return None
    path = Path(str(source)).expanduser()
    if path.exists():
        return path
    text = str(source)
    if text.count("/") != 1 or text.startswith(("/", ".", "~")):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - ships with diffusers and transformers
        return None
    for name in ("model_index.json", "config.json"):
        try:
            cached = try_to_load_from_cache(text, name)
        except (ValueError, OSError):  # not a valid repo id
            return None
        if isinstance(cached, str) and os.path.isfile(cached):
            return Path(cached).parent
    return None


def _files_named_in(chain: list[BaseException]) -> list[Path]:
    """Existing files whose paths appear in the messages of ``chain`` (diffusers, onnxruntime name them)."""
    found: list[Path] = []
    for exc in chain:
        for match in _PATH_IN_MESSAGE.finditer(str(exc)):
            path = Path(match.group(1).rstrip(".:")).expanduser()
            if path not in found and path.is_file():
                found.append(path)
    return found


def _error(path: Path, reason: str, what: str | None, fix: str) -> WeightsFileError:
    kind = "config" if path.suffix.lower() == ".json" else "weights"
    where = f" ({what})" if what else ""
    return WeightsFileError(f"cannot read {kind} file {path}{where}: {reason.rstrip('.')}. Truncated, not a {kind} "
                            f"file, or a different format? {fix}.")


def weights_file_error(exc: BaseException, source=None, what: str | None = None,
                       fix: str = DEFAULT_FIX) -> WeightsFileError | None:
    """The :class:`WeightsFileError` that ``exc`` (raised while loading ``source``) means, or None
    when ``exc`` is not about an unreadable file (then the caller should let it propagate).

    ``source``: the file or folder being loaded (or a hub id, looked up in the local cache);
    ``what``: what it is, for the message (e.g. "VAE 'madebyollin/sdxl-vae-fp16-fix'"); ``fix``:
    what the user should do, ending the message.
    """
    chain = _chain(exc)
    definite = next((e for e in chain if _is_bad_file_error(e)), None)
    if definite is None and not any(isinstance(e, _AMBIGUOUS_TYPES) or _matches(e, _AMBIGUOUS_CLASSES) for e in chain):
        return None
    local = _local_source(source)
    candidates = _files_named_in(chain)
    if local is not None and local.is_file() and local not in candidates:
        candidates.append(local)
    for path in candidates:
        reason = diagnose_file(path)
        if reason:
            return _error(path, reason, what, fix)
    if local is not None and local.is_dir():
        found = find_unreadable_file(local)
        if found:
            return _error(*found, what, fix)
    if definite is None:
        return None  # e.g. a missing file or a CUDA error: the files look fine
    # The library saw a bad file but the quick checks did not find which (e.g. a truncated .onnx).
    root = _chain(definite)[-1] if _is_bad_file_error(_chain(definite)[-1]) else definite
    text = one_line(root, 200)
    text = text.split("failed:", 1)[-1].strip() if "failed:" in text else text  # onnxruntime repeats the path
    reason = f"{type(root).__name__}: {text}"
    if candidates:
        return _error(candidates[0], reason, what, fix)
    where = f"a file in {local}" if local is not None else f"the files of {source}"
    return WeightsFileError(f"cannot read {where}{f' ({what})' if what else ''}: {reason.rstrip('.')}. Is one "
                            f"truncated, not a model file, or in a different format? {fix}.")


def check_readable(source, what: str | None = None, fix: str = DEFAULT_FIX) -> None:
    """Raise :class:`WeightsFileError` for the first unreadable model file in folder (or file) ``source``.

    For loaders that skip a bad file silently (accelerate ignores random states it cannot read),
    and to fail before work starts. Checks headers only (see :func:`diagnose_file`).
    """
    local = _local_source(source)
    if local is None:
        return
    found = find_unreadable_file(local) if local.is_dir() else ((local, r) if (r := diagnose_file(local)) else None)
    if found:
        raise _error(*found, what, fix)


@contextmanager
def reading_weights(source, what: str | None = None, fix: str = DEFAULT_FIX) -> Iterator[None]:
    """Run a weights loader; an unreadable file becomes one :class:`WeightsFileError` line.

    ``source``: the file or folder the loader reads (a hub id is looked up in the local cache);
    ``what``: what is being loaded, for the message; ``fix``: the advice that ends it. Raises :class:`WeightsFileError`
    naming the file when the loader fails on a truncated, empty or wrong-format file (see the module doc);
    a :class:`UserError` and every exception that is not about a bad file propagate unchanged.
    """
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised unchanged unless it is about a bad file
        error = weights_file_error(exc, source, what, fix)
        if error is None:
            raise
        raise error from None

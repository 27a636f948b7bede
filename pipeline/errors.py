"""User-facing errors: one clear line, no traceback, non-zero exit."""
from __future__ import annotations

import contextlib
import errno
from pathlib import Path
from typing import Iterator


class UserError(Exception):
    """Bad input or environment the user can fix. The CLI prints ``str(err)`` on one line."""


class ModelNotFoundError(UserError):
    """A model (or tokenizer, VAE, classifier) could not be found locally, in the cache or as a built-in."""


class MissingDependencyError(UserError):
    """An optional dependency needed for the requested feature is not installed."""


class OutputNotWritable(UserError):
    """An output could not be written: permission denied, a read-only file system, a full disk or quota."""


# errno -> (what the OS said, what the user can do). The OS errors a user fixes by choosing another place or
# freeing space; any other OSError is a bug or a broken system and keeps its traceback.
_PLACE = "choose another output folder or make this one writable"
_SPACE = "free some space or choose an output folder on another disk"
OUTPUT_ERRNOS = {
    errno.EACCES: ("permission denied", _PLACE),
    errno.EPERM: ("operation not permitted", _PLACE),
    errno.EROFS: ("read-only file system", _PLACE),
    errno.ENOSPC: ("no space left on device", _SPACE),
    errno.EDQUOT: ("disk quota exceeded", _SPACE),
}
_WRITE_ONLY = {errno.EROFS, errno.ENOSPC, errno.EDQUOT}  # only a write gets these: an output for sure


def output_error_message(exc: OSError, path: str | Path | None = None, *, writing: bool = False) -> str | None:
    """One line for an OS error in :data:`OUTPUT_ERRNOS`, naming the file (the error's own, else ``path``); None
    for any other error. ``writing``: the caller knows it was writing an output ("cannot write ..."); otherwise
    only the write-only errors (read-only file system, full disk, quota) say so."""
    if not isinstance(exc, OSError) or exc.errno not in OUTPUT_ERRNOS:
        return None
    reason, fix = OUTPUT_ERRNOS[exc.errno]
    name = exc.filename if exc.filename is not None else path
    where = f" '{name}'" if name is not None else (" the output" if writing else "")
    if writing or exc.errno in _WRITE_ONLY:
        return f"cannot write{where}: {reason}; {fix}."
    return f"cannot access{where}: {reason}; check the path and its permissions (an output folder: {fix})."


@contextlib.contextmanager
def writing_output(path: str | Path, *, name_path: bool = False) -> Iterator[None]:
    """Within it, an OS error of :data:`OUTPUT_ERRNOS` becomes one :class:`OutputNotWritable` line naming the
    file (the error's own, else ``path``; ``name_path``: always ``path``, for writers that write a temporary
    first, whose name means nothing to the user); other errors pass unchanged. Every shared writer uses it
    (:func:`pipeline.data.atomic.atomic_write`, shard, manifest and checkpoint writes); the CLI catches the rest
    (:func:`pipeline.cli.support.user_errors_exit`)."""
    try:
        yield
    except OSError as exc:
        if name_path:
            exc = OSError(exc.errno, exc.strerror, str(path))
        message = output_error_message(exc, path, writing=True)
        if message is None:
            raise
        raise OutputNotWritable(message) from None


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line (library messages span many lines)."""
    text = " ".join(str(exc).split())
    return (text[:limit] + " ...") if len(text) > limit else (text or type(exc).__name__)


def require(module: str, feature: str, extra: str | None = None):
    """Import an optional dependency, or raise a one-line error naming how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        hint = f"pip install 'mapo-tools[{extra}]'" if extra else f"pip install {module}"
        raise MissingDependencyError(f"{feature} needs the '{module}' package ({hint}): {exc}") from None

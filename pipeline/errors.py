"""User-facing errors: one clear line, no traceback, non-zero exit."""
from __future__ import annotations


class UserError(Exception):
    """Bad input or environment the user can fix. The CLI prints ``str(err)`` on one line."""


class ModelNotFoundError(UserError):
    """A model (or tokenizer, VAE, classifier) could not be found locally, in the cache or as a built-in."""


class MissingDependencyError(UserError):
    """An optional dependency needed for the requested feature is not installed."""


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

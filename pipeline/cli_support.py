"""Shared CLI plumbing: user errors become one line on stderr and a non-zero exit."""
from __future__ import annotations

import functools
import sys

from .errors import UserError

EXIT_USER_ERROR = 2


def signal_exit_code(name: str) -> int:
    """The shell's exit status for a process ended by signal ``name`` ("SIGINT" -> 130, "SIGTERM" -> 143):
    128 + the signal number (POSIX shells), so ``mapo-train ... && mapo-eval ...`` stops after an interrupt."""
    import signal

    return 128 + int(signal.Signals[name])


def user_errors_exit(fn):
    """Decorator for typer commands: ``UserError`` -> ``error: <message>`` and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import typer

        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            print("interrupted: finished shards are kept; rerun the same command to resume.", file=sys.stderr)
            raise typer.Exit(signal_exit_code("SIGINT")) from None

    return wrapper

"""Shared CLI plumbing: user errors become one line on stderr and a non-zero exit."""
from __future__ import annotations

import functools
import sys

from pipeline.errors import UserError, output_error_message

EXIT_USER_ERROR = 2


def signal_exit_code(name: str) -> int:
    """The shell's exit status for a process ended by signal ``name`` ("SIGINT" -> 130, "SIGTERM" -> 143):
    128 + the signal number (POSIX shells), so ``mapo-train ... && mapo-eval ...`` stops after an interrupt."""
    import signal

    return 128 + int(signal.Signals[name])


def user_errors_exit(fn):
    """Decorator for typer commands (every command: :func:`pipeline.cli.options.command`): ``UserError`` ->
    ``error: <message>`` and exit code 2; so is an OS error that a user fixes by choosing another place or
    freeing space (permission denied, read-only file system, full disk:
    :func:`pipeline.errors.output_error_message`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import typer

        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except OSError as exc:  # a write no shared writer wrapped (a library's save): same one line
            message = output_error_message(exc)
            if message is None:
                raise
            print(f"error: {message}", file=sys.stderr)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            print("interrupted: finished shards are kept; rerun the same command to resume.", file=sys.stderr)
            raise typer.Exit(signal_exit_code("SIGINT")) from None

    return wrapper


def usage_errors_in_one_line(parse, ctx):
    """``parse()`` (a click command's or group's argument parsing or command lookup), with click's usage
    errors (unknown option or command, a value of the wrong type, a missing argument) said as one
    ``error: <click's message> (see <command> --help)`` line on stderr and exit status 2, as every other
    error, instead of click's boxed usage text. ``--help`` on a group run without arguments still shows."""
    import typer

    # typer ships its own copy of click: take its UsageError from a public subclass.
    usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
    try:
        return parse()
    except usage_error as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `mapo-data` alone: its help, as no_args_is_help asks
            raise
        print(f"error: {' '.join(exc.format_message().split())} (see {ctx.command_path} --help)", file=sys.stderr)
        ctx.exit(EXIT_USER_ERROR)


def one_line_errors_group():
    """The typer group class for apps with subcommands (``typer.Typer(cls=one_line_errors_group())``): a
    misspelled subcommand (``mapo-data genrate``) or an unknown group option is one ``error:`` line with
    click's own message and suggestion, exit status 2 (:func:`usage_errors_in_one_line`). Commands get the
    same from :func:`pipeline.cli.options.command`."""
    from typer.core import TyperGroup

    class OneLineErrorsGroup(TyperGroup):
        def parse_args(self, ctx, args):
            return usage_errors_in_one_line(lambda: super(OneLineErrorsGroup, self).parse_args(ctx, args), ctx)

        def resolve_command(self, ctx, args):
            return usage_errors_in_one_line(lambda: super(OneLineErrorsGroup, self).resolve_command(ctx, args), ctx)

    return OneLineErrorsGroup

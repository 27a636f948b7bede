"""The output-folder contract every command follows (stages, ``mapo-eval``, ``mapo-train``).

A command owns a fixed set of names in its folder and recognises its own folders by a marker file
(a manifest, ``eval_config.json``, ``training_config.json``). Before writing anything it either
claims the folder or refuses it in one line:

- a file where the folder should be, or a non-empty folder that is not this command's output:
  refused (never cleared, even with ``--overwrite``: it may hold the user's data);
- this command's output made with other settings: refused, naming each differing key with the
  folder's value, unless ``--overwrite`` (the owned names are then removed) or resuming is allowed;
- otherwise: claimed (resumed when the settings match).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from pipeline.errors import UserError, writing_output


def differing_keys(old: dict, new: dict, keys: Iterable[str] | None = None) -> list[str]:
    """Keys (``keys``, default: all of either dict; sorted) whose values differ between ``old`` and ``new``."""
    names = sorted(set(old) | set(new)) if keys is None else list(keys)
    return [k for k in names if old.get(k) != new.get(k)]


@dataclass(frozen=True)
class OutputFolder:
    """One command's output folder: the names it owns and the marker file that says it is its own."""

    root: Path
    owned: tuple[str, ...]  # top-level names the command writes (cleared by --overwrite)
    marker: str  # the file whose presence says "this command's output"
    command: str  # for messages: "mapo-data", "mapo-eval", "mapo-train"
    flag: str = "--output"  # the option that named the folder

    def check_writable(self) -> None:
        """Refuse now, in one line naming the folder, when it cannot be created or written (permission denied,
        a read-only file system, a full disk): called before any model loads, so the run fails in seconds, not
        after loading. Leaves nothing behind: the folders and the probe file it made are removed again.

        Raises:
            pipeline.errors.OutputNotWritable: the folder or a parent cannot be created, or a file in it written.
        """
        import os

        missing = [p for p in (self.root, *self.root.parents) if not p.exists()]
        try:
            with writing_output(self.root):
                self.root.mkdir(parents=True, exist_ok=True)
                probe = self.root / f".write-test-{os.getpid()}"
                probe.write_bytes(b"")
                probe.unlink()
        finally:
            for folder in missing:  # deepest first: only the ones made here, and only while empty
                try:
                    folder.rmdir()
                except OSError:
                    break

    def is_ours(self) -> bool:
        return (self.root / self.marker).is_file()

    def present(self) -> list[str]:
        """The owned names that exist in the folder."""
        return [name for name in self.owned if (self.root / name).exists()]

    def refuse_foreign(self) -> None:
        """Refuse a file at ``root``, or a non-empty folder without the marker (commands write their marker
        first, so such a folder is not theirs: a folder of ``data/`` and ``README.md`` may be a user's
        dataset). Only empty owned folders are tolerated (and cleared by :meth:`clear`).

        Raises:
            UserError: one line naming the folder and what to do; never cleared, not even with --overwrite.
        """
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"{self.flag} {self.root} exists and is not a folder; choose another {self.flag}.")
        if self.root.is_dir() and not self.is_ours():
            if any(p.name not in self.owned or not p.is_dir() or any(p.iterdir()) for p in self.root.iterdir()):
                raise UserError(f"{self.root} exists, is not empty and is not a {self.command} output; "
                                f"choose another {self.flag}.")

    def refuse_differences(self, old: dict, new: dict, keys: Iterable[str] | None = None, *, remedy: str,
                           said: str = "was made by another configuration", show_values: bool = False,
                           differ: bool = False) -> None:
        """Refuse when ``old`` (the folder's recorded settings) and ``new`` differ on ``keys``, or whenever
        ``differ`` (the caller knows they differ, e.g. by fingerprint, even if no key shows it: "config").

        Raises:
            UserError: "<root> <said> (differs in: k1, k2). <remedy>", with "; it has k1=..." before the
                closing parenthesis when ``show_values``.
        """
        diff = differing_keys(old, new, keys) or (["config"] if differ else [])
        if diff:
            had = ", ".join(f"{k}={old.get(k)!r}" for k in diff if k in old) if show_values else ""
            raise UserError(f"{self.root} {said} (differs in: {', '.join(diff)}"
                            + (f"; it has {had}" if had else "") + f"). {remedy}")

    def clear(self) -> None:
        """Remove every owned name (``--overwrite``); anything else in the folder is left alone. Call only
        after :meth:`refuse_foreign` passed."""
        for name in self.present():
            path = self.root / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()

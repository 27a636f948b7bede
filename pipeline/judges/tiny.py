"""Tiny random weights for every judge, built offline (tests, the demo, the CPU benchmark, ``--tiny-scorers``).

The real loading and scoring code runs; only the weights are random, so the numbers measure nothing.
Each judge builds its own (``JudgeSpec.tiny``); safety stays NudeNet, whose real model ships in its wheel.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from .registry import judges


def kept_weights() -> tuple[str, ...]:
    """Options whose value, when a user names it, overrides the tiny one (every ``JudgeSpec.keep_with_tiny``)."""
    return tuple(k for s in judges().values() for k in s.keep_with_tiny)


def tiny_judge_options(directory: str | os.PathLike | None = None, style_text: str | None = None, **overrides):
    """:class:`~pipeline.judges.options.JudgeOptions` whose every judge's weights are tiny and random, built
    offline once under ``directory`` (default: the cache's ``scorers/tiny``), with ``overrides`` on top."""
    from pipeline.models.loading import quiet_hub_progress

    from .options import JudgeOptions
    from .weights import cache_dir

    root = Path(directory) if directory is not None else cache_dir() / "tiny"
    quiet_hub_progress()
    values = {}
    for spec in judges().values():
        if spec.tiny is not None:
            values.update(spec.tiny(root))
    return replace(JudgeOptions(**values, style_text=style_text, tiny=True), **overrides)


def tiny_safety_checker_dir(options) -> str:
    """The tiny SD safety checker folder next to the tiny weights of ``options``."""
    return str(Path(options.pickscore_model).parent / "sd-safety-checker")

"""``python -m pipeline.world``: caption files for the miniature world, and the judges' check on renders."""
from __future__ import annotations

import json
from dataclasses import dataclass

import typer

from pipeline.cli.options import at_least, command, option
from pipeline.cli.support import one_line_errors_group

from .scene import CAPTION_PREFIXES
from .scene import captions as world_captions

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=__doc__, cls=one_line_errors_group())

@dataclass
class CaptionsConfig:
    """``python -m pipeline.world captions``: declared once (:mod:`pipeline.cli.options`)."""

    split: str = option("all", choices=("train", "heldout", "all"),
                        help="train (48 captions the base model saw), heldout (12 it never saw) or all.")
    prefix: str | None = option(None, choices=tuple(CAPTION_PREFIXES), help=(
        "Prefix every caption with the prompt prefix of: cartoon, pixel, realistic, unsafe (the paper's strings)."))
    repeat: int = option(1, check=at_least(1), help=(
        "Write each caption this many times (with generate --keep-duplicates: more pairs)."))
    output: str | None = option(None, help="Write to this file (default: print).")


@dataclass
class CheckJudgesConfig:
    """``python -m pipeline.world check-judges``."""

    per_scene: int = option(2, check=at_least(1), help=(
        "Renders per (caption, look, frame); the renders use held-out jitter seeds."))
    seed: int = option(12345, help="Jitter seed (the pretraining renders use other seeds).")


@command(app, CaptionsConfig, name="captions")
def captions(cfg: CaptionsConfig):
    """Write the world's captions, one per line: a prompt file for generate, eval or validation."""
    lines = [f"{CAPTION_PREFIXES[cfg.prefix]} {c}" if cfg.prefix else c for c in world_captions(cfg.split)] * cfg.repeat
    text = "\n".join(lines) + "\n"
    if cfg.output is None:
        typer.echo(text, nl=False)
    else:
        from pipeline.data.shards import write_text_atomic

        write_text_atomic(cfg.output, text)


@command(app, CheckJudgesConfig, name="check-judges")
def check_judges(cfg: CheckJudgesConfig):
    """Agreement of each judge with the renderer on fresh renders of all 60 captions (JSON on stdout)."""
    from .judges import agreement_on_renders

    typer.echo(json.dumps(agreement_on_renders(cfg.per_scene, cfg.seed), indent=1))


if __name__ == "__main__":  # pragma: no cover
    app()

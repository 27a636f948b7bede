"""``python -m pipeline.world``: caption files for the miniature world, and the judges' check on renders."""
from __future__ import annotations

import json
from typing import Optional

import typer

from pipeline.cli_support import user_errors_exit

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=__doc__)

PREFIX_HELP = "Prefix every caption with the prompt prefix of: cartoon, pixel, realistic, unsafe (the paper's strings)."


@app.command()
@user_errors_exit
def captions(
    split: str = typer.Option("all", help="train (48 captions the base model saw), heldout (12 it never saw) or all."),
    prefix: Optional[str] = typer.Option(None, help=PREFIX_HELP),
    repeat: int = typer.Option(1, help="Write each caption this many times (with generate --keep-duplicates: more pairs)."),
    output: Optional[str] = typer.Option(None, help="Write to this file (default: print)."),
):
    """Write the world's captions, one per line: a prompt file for generate, eval or validation."""
    from pipeline.errors import UserError

    from .scene import CAPTION_PREFIXES as prefixes, captions as world_captions

    if prefix is not None and prefix not in prefixes:
        raise UserError(f"unknown --prefix '{prefix}'; choose one of {', '.join(prefixes)}")
    if repeat < 1:
        raise UserError("--repeat must be at least 1")
    lines = [f"{prefixes[prefix]} {c}" if prefix else c for c in world_captions(split)] * repeat
    text = "\n".join(lines) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        from pipeline.shards import write_text_atomic

        write_text_atomic(output, text)


@app.command("check-judges")
@user_errors_exit
def check_judges(
    per_scene: int = typer.Option(2, help="Renders per (caption, look, frame); the renders use held-out jitter seeds."),
    seed: int = typer.Option(12345, help="Jitter seed (the pretraining renders use other seeds)."),
):
    """Agreement of each judge with the renderer on fresh renders of all 60 captions (JSON on stdout)."""
    from .judges import agreement_on_renders

    typer.echo(json.dumps(agreement_on_renders(per_scene, seed), indent=1))


if __name__ == "__main__":  # pragma: no cover
    app()

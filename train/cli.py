"""``mapo-train``: the MaPO / Diffusion-DPO / SFT trainer (see its issue; options land with it)."""
from __future__ import annotations

import typer

app = typer.Typer(
    help="Train a diffusion model on precomputed preference shards with MaPO (or DPO / SFT baselines).",
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback(invoke_without_command=True)
def main(ctx: typer.Context):
    """Not implemented yet: the trainer lands with its own issue."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())

"""``mapo-data``: the data stages. Parses options into a config and calls the stage."""
from __future__ import annotations

import typer

from pipeline.cli.formatting import count
from pipeline.cli.options import command
from pipeline.cli.support import one_line_errors_group

from .generate import GenerateConfig
from .inspect import InspectConfig
from .label import LabelConfig
from .precompute import PrecomputeConfig

app = typer.Typer(
    help="Build MaPO preference data: generate pairs, label them, precompute latents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=one_line_errors_group(),
)


def _nothing_to_do(stage: str, written: int, skipped: int, output, seconds: float, where: str = "") -> bool:
    """Print one line and return True when a rerun found every shard of its configuration done (none written,
    some skipped): the usual summary would read "0 pairs in 0 shards", as if the stage had failed to make any."""
    if written or not skipped:
        return False
    typer.echo(f"{stage}:{where} nothing to do: {output} already holds all {count(skipped, 'shard')} of this "
               f"configuration (--overwrite to redo) | {seconds:.1f}s total")
    return True


@app.callback()
def _group():
    """Build MaPO preference data: generate pairs, label them, precompute latents."""


@command(app, GenerateConfig)
def generate(cfg: GenerateConfig):
    """Generate image pairs from prompts with a text-to-image model, as Parquet shards."""
    from .generate import run_generate

    result = run_generate(cfg)
    where = f" process {result.process[0]}/{result.process[1]}:" if result.process[1] > 1 else ""
    if _nothing_to_do("generate", result.shards_written, result.shards_skipped, result.output, result.seconds,
                      where.rstrip(":")):
        return
    k = cfg.recipe.images_per_prompt
    made = (count(result.pairs_written, "pair") if k == 2
            else f"{count(result.pairs_written, 'prompt')} x {k} candidates")
    dropped = [count(n, f"{what} prompt") for n, what in
               ((result.dropped_empty, "blank"), (result.dropped_duplicates, "duplicate")) if n]
    typer.echo(
        f"generate:{where} {made} in {count(result.shards_written, 'shard')} "
        f"({result.shards_skipped} already done) -> {result.output} | {result.seconds:.1f}s total, "
        f"{result.pairs_per_second:.2f} pairs/s, {100 * result.outside_pipeline_share:.0f}% of generation time "
        "outside the pipeline call" + (f"; {' and '.join(dropped)} dropped" if dropped else "")
    )


@command(app, LabelConfig)
def label(cfg: LabelConfig):
    """Label generated pairs into a Pick-a-Pic / MaPO preference dataset with a dataset card."""
    from .label import run_label

    r = run_label(cfg)
    if not _nothing_to_do("label", r.shards_written, r.shards_skipped, r.output, r.seconds):
        typer.echo(r.summary())


@command(app, InspectConfig)
def inspect(cfg: InspectConfig):
    """Summarise a label or generate output: counts, label balance, drop reasons, score histograms."""
    from .inspect import inspect_output, render_text, write_html

    summary = inspect_output(cfg.directory, cfg.layout)
    typer.echo(render_text(summary))
    if cfg.html:
        path = write_html(cfg.directory, cfg.html, samples=cfg.samples, seed=cfg.seed)
        typer.echo(f"inspect: wrote {path}")


@command(app, PrecomputeConfig)
def precompute(cfg: PrecomputeConfig):
    """Encode preference pairs (or unpaired labelled images, for kto) into VAE latents + text embeddings for mapo-train
    (no VAE/text encoders at train time)."""
    from .precompute import run_precompute

    r = run_precompute(cfg)
    if _nothing_to_do("precompute", r.shards_written, r.shards_skipped, r.output, r.seconds):
        return
    if r.shape == "unpaired":  # the examples' balance: KTO data is often imbalanced (normal)
        share = f"{100 * r.desirable / r.pairs_written:.1f}%" if r.pairs_written else "-"
        typer.echo(f"precompute: {count(r.pairs_written, 'unpaired example')} ({r.desirable} desirable, {share}) in "
                   f"{count(r.shards_written, 'shard')} ({r.shards_skipped} already done), {r.rejects} rejected, "
                   f"{count(r.captions_encoded, 'caption')} encoded -> {r.output} | {r.seconds:.1f}s total")
        return
    typer.echo(
        f"precompute: {count(r.pairs_written, 'pair')} in {count(r.shards_written, 'shard')} "
        f"({r.shards_skipped} already done), {count(r.ties, 'tie')} dropped, {r.rejects} rejected, "
        f"{count(r.captions_encoded, 'caption')} encoded -> {r.output} | "
        f"{r.seconds:.1f}s total, {r.pairs_per_second:.2f} pairs/s, "
        f"{r.bytes_per_pair / 1024:.1f} KiB of latents per pair"
    )


def main():  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

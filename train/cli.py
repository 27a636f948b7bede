"""``mapo-train``: options (declared in :class:`TrainConfig`; YAML < command line) into the trainer."""
from __future__ import annotations

import typer

from pipeline.cli.formatting import count, distinct_digits
from pipeline.cli.options import command
from pipeline.cli.support import signal_exit_code

from .config import TrainConfig

app = typer.Typer(
    help=("Train a diffusion model with MaPO on precomputed preference shards (or Diffusion-DPO, SFT and Diffusion-KTO "
          "baselines), or online from prompts with SPO."),
    add_completion=False,
    pretty_exceptions_enable=False,
)


@command(app, TrainConfig, name="main")
def main(cfg: TrainConfig):
    """Train with MaPO, Diffusion-DPO, SFT or Diffusion-KTO on latents from `mapo-data precompute`, or with SPO
    online from --prompts."""
    from .trainer import run_train

    result = run_train(cfg)
    if result.stopped_by_signal:
        typer.echo(f"mapo-train: stopped by {result.stopped_by_signal} at step {result.steps}; "
                   f"checkpoint saved, rerun with --resume-from-checkpoint latest")
        raise typer.Exit(signal_exit_code(result.stopped_by_signal))  # not 0: the run is unfinished
    if not result.is_main:  # one summary per run, from the process that saved
        return
    m = result.final_metrics
    keys = [k for k in ("loss", "e_w", "e_l", "implicit_acc") if k in m]
    summary = ", ".join(f"{k} {v}" for k, v in zip(keys, distinct_digits([m[k] for k in keys])))
    typer.echo(f"mapo-train: {count(result.steps - result.start_step, 'step')} ({result.start_step} -> {result.steps}) "
               f"in {result.seconds:.1f}s; {summary}; non-finite skipped {result.nonfinite_skipped}; "
               f"saved {result.saved}; {_engine(result.distributed)}")


def _engine(record: dict) -> str:
    """The engine that ran, as the summary line says it: "engine fsdp2 on 2 processes", "engine single on 1 process"."""
    n = record.get("num_processes", 1)
    return f"engine {record.get('engine', 'single')} on {n} process{'es' if n != 1 else ''}"


if __name__ == "__main__":  # pragma: no cover
    app()

"""``python -m bench``: see bench/__init__.py and docs/benchmarks.md."""
from __future__ import annotations

import typer

from pipeline.cli.options import command

from .config import BenchConfig

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  help="Time and memory of mapo / dpo / sft training steps, side by side.")


@command(app, BenchConfig)
def main(cfg: BenchConfig):
    """Time and memory of mapo / dpo / sft training steps, side by side (--estimate: on fake tensors, no GPU)."""
    cfg = cfg.resolved()
    if cfg.estimate:
        from .estimate import format_estimate, run_estimate

        print(format_estimate(run_estimate(cfg, tuple(cfg.gpu_memory))))
    else:
        from .runner import format_table, run_bench

        print(format_table(run_bench(cfg)))
    print(f"\nwritten: {cfg.output}")


if __name__ == "__main__":
    app()

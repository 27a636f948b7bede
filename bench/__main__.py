"""``python -m bench``: every benchmark of the project, one subcommand each (see bench/__init__.py and
docs/benchmarks.md). The CLI only parses and calls: each subcommand's options are a config dataclass declared
with pipeline.cli.options, its work a function of that config in its own module."""
from __future__ import annotations

import inspect

import typer

from pipeline.cli.options import command
from pipeline.cli.support import one_line_errors_group

from .config import BenchConfig
from .generate import GenerateBenchConfig
from .layout_memory import LayoutMemoryBenchConfig
from .optimizer import OptimizerBenchConfig
from .precompute import PrecomputeBenchConfig
from .profile import ProfileBenchConfig
from .scoring import EvalBenchConfig

app = typer.Typer(
    help="Benchmarks: speed and memory of training steps, generation, precompute, scoring, the optimizer and "
         "input reading. Each prints numbers; none is a test.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=one_line_errors_group(),
)


@app.callback()
def _group():
    """Benchmarks: each subcommand prints numbers (none is a test); see docs/benchmarks.md."""


def _paragraphs(fn):
    """``fn`` with each paragraph of its docstring on one line: --help shows the docstring's line breaks as they
    are, and the source's wrapped at 120 columns read badly wrapped again at the terminal's width."""
    fn.__doc__ = "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(fn.__doc__).split("\n\n"))
    return fn


def _print_lines(lines) -> None:
    for line in lines:
        typer.echo(line)


@command(app, BenchConfig, name="train")
@_paragraphs
def train(cfg: BenchConfig):
    """Time and memory of mapo / dpo / sft training steps, side by side, each configuration in its own process.

    Prints a table (ms/step, pairs/s, peak memory, largest batch on a GPU, FLOPs, MFU, ratios against DPO) and
    writes JSON to --output (default bench-output/bench.json). --estimate: peak memory by kind, FLOPs and the
    largest batch per card on fake tensors, on the CPU, allocating nothing (default bench-output/estimate.json).
    """
    cfg = cfg.resolved()
    if cfg.estimate:
        from .estimate import format_estimate, run_estimate

        typer.echo(format_estimate(run_estimate(cfg, tuple(cfg.gpu_memory))))
    else:
        from .runner import format_table, run_bench

        typer.echo(format_table(run_bench(cfg)))
    typer.echo(f"\nwritten: {cfg.output}")


@command(app, GenerateBenchConfig, name="generate")
@_paragraphs
def generate(cfg: GenerateBenchConfig):
    """Generation throughput of mapo-data generate's stage, batch-invariant and batched.

    Prints one line per mode: pairs/s and the share of time outside the diffusion pipeline call. Writes nothing
    (its prompts and shards live in a temporary folder).
    """
    from .generate import generate_lines

    _print_lines(generate_lines(cfg))


@command(app, PrecomputeBenchConfig, name="precompute")
@_paragraphs
def precompute(cfg: PrecomputeBenchConfig):
    """Throughput and storage of mapo-data precompute's stage on a synthetic Pick-a-Pic-format input.

    Prints pairs/s, bytes per pair on disk, bytes per distinct caption, then SDXL's bytes per pair at 1024 px from
    the storage format. Writes nothing (input and output live in a temporary folder).
    """
    from .precompute import precompute_lines

    _print_lines(precompute_lines(cfg))


@command(app, EvalBenchConfig, name="eval")
@_paragraphs
def eval_(cfg: EvalBenchConfig):
    """Scoring throughput of each mapo-eval metric (--arch real: the judges' real architectures, random weights).

    Prints one line per metric: images/s and ms per image. Writes nothing.
    """
    from .scoring import eval_lines

    _print_lines(eval_lines(cfg))


@command(app, OptimizerBenchConfig, name="optimizer")
@_paragraphs
def optimizer(cfg: OptimizerBenchConfig):
    """BF16AdamW's update alone, by chunk size, on a model's weight shapes.

    Prints one line per chunk size: median ms per optimizer step and the ratio to a per-weight update (chunk 1).
    Writes nothing.
    """
    from .optimizer import optimizer_lines

    _print_lines(optimizer_lines(cfg))


@command(app, LayoutMemoryBenchConfig, name="layout-memory")
@_paragraphs
def layout_memory(cfg: LayoutMemoryBenchConfig):
    """Peak memory of reading a large HPDv3 JSON and WebDataset tar as precompute reads them (or, with
    --precompute, of whole precompute runs), each in a fresh process.

    Prints one JSON line per case: peak RSS, RSS after imports, seconds. Writes only to a temporary folder.
    """
    from .layout_memory import layout_memory_lines

    _print_lines(layout_memory_lines(cfg))


@command(app, ProfileBenchConfig, name="profile")
@_paragraphs
def profile(cfg: ProfileBenchConfig):
    """Where one configuration's training step spends its time (torch.profiler).

    Prints the top operators by self time (CUDA time on a GPU); --trace also writes a Chrome trace there.
    """
    from .profile import profile_table

    typer.echo(profile_table(cfg))


if __name__ == "__main__":
    app()

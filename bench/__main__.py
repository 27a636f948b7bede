"""``python -m bench``: see bench/__init__.py and docs/benchmarks.md."""
from __future__ import annotations

import typer

from pipeline.cli_support import user_errors_exit

from .config import CONFIGURATIONS, BenchConfig

app = typer.Typer(add_completion=False, help="Time and memory of mapo / dpo / sft training steps, side by side.")


@app.command()
@user_errors_exit
def main(
    model: str = typer.Option("tiny-sdxl", help="tiny-sdxl (CPU, CI-sized), sdxl-arch (GPU: 1024 px, bf16), or any model id/folder."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    resolution: int = typer.Option(None, help="Image size in px (default: the model preset's)."),
    batch_size: int = typer.Option(None, help="Pairs per step (default: the model preset's)."),
    dtype: str = typer.Option(None, help="fp32 or bf16 (mixed precision, autocast; default: the preset's)."),
    steps: int = typer.Option(None, help="Timed steps per configuration (median reported)."),
    warmup: int = typer.Option(None, help="Untimed steps first."),
    gradient_checkpointing: bool = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing",
                                                help="Default: the preset's (on for sdxl-arch)."),
    configurations: str = typer.Option(",".join(CONFIGURATIONS), help="Comma-separated subset of: " + ", ".join(CONFIGURATIONS) + "."),
    lora_rank: int = typer.Option(8, help="Rank of the LoRA configurations."),
    pairs: int = typer.Option(None, help="Distinct pairs of data (default: 4 batches)."),
    max_batch: bool = typer.Option(True, "--max-batch/--no-max-batch", help="Search the largest batch for mapo and dpo (GPU only)."),
    max_batch_limit: int = typer.Option(256, help="Stop the search at this batch."),
    peak_tflops: float = typer.Option(None, help="Device peak TFLOP/s for MFU (default: bf16 dense peak of known GPUs)."),
    output: str = typer.Option("bench-output/bench.json", help="Where to write the JSON result."),
    seed: int = typer.Option(0),
):
    from .runner import format_table, run_bench

    cfg = BenchConfig(model=model, device=device, resolution=resolution, batch_size=batch_size, dtype=dtype, steps=steps,
                      warmup=warmup, gradient_checkpointing=gradient_checkpointing,
                      configurations=[c.strip() for c in configurations.split(",") if c.strip()],
                      lora_rank=lora_rank, pairs=pairs, max_batch=max_batch, max_batch_limit=max_batch_limit,
                      peak_tflops=peak_tflops, output=output, seed=seed)
    result = run_bench(cfg)
    print(format_table(result))
    print(f"\nwritten: {output}")


if __name__ == "__main__":
    app()

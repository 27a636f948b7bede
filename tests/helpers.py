"""Helpers shared by tests: run the real CLIs in-process or as subprocesses."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

BIN = Path(sys.executable).parent


def run_cli(app, args: list[str]):
    """Invoke a typer app in-process (fast). Returns the click Result (exit_code, output)."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def run_console(
    script: str, args: list[str], timeout: int = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run an installed console script (e.g. mapo-data) as a real subprocess."""
    env = env if env is not None else {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [str(BIN / script), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )


def read_table(folder: Path, subdir: str = "data"):
    import pyarrow.parquet as pq

    files = sorted((Path(folder) / subdir).glob("*.parquet"))
    assert files, f"no shards in {folder}/{subdir}"
    import pyarrow as pa

    return pa.concat_tables([pq.read_table(f) for f in files])


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.write_text("\n".join(prompts) + "\n")
    return path


# accelerate's `accelerate-launch` console script: the same launch_command_parser and launch_command as
# `accelerate launch`, without the `accelerate` script importing every other subcommand first (`estimate` pulls in
# transformers, timm and torchvision: ~4.5 s of each launch on this machine).
ACCELERATE_LAUNCH = [str(BIN / "accelerate-launch")]


def run_accelerate(script: str, args: list, num_processes: int = 2, env: dict | None = None, timeout: int = 300):
    """Run a console script under ``accelerate-launch`` (= ``accelerate launch``) with several CPU processes.

    ``accelerate launch --cpu --num_processes N`` silently starts ONE process (the simple
    launcher); several CPU processes need the distributed launcher plus ACCELERATE_USE_CPU.
    One thread per process, as accelerate gives CPU workers, so single-process references
    run with OMP_NUM_THREADS=1 too (thread counts change CPU kernels' last bits).
    """
    env = {**(env if env is not None else os.environ), "PYTHONUNBUFFERED": "1", "ACCELERATE_USE_CPU": "true",
           "OMP_NUM_THREADS": "1"}
    cmd = [*ACCELERATE_LAUNCH, "--multi_gpu", "--num_processes", str(num_processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           str(BIN / script), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def kill_after_shards(script: str, args: list, out: Path, shards: int, timeout: float = 120) -> int:
    """Start a console script, SIGKILL it once ``shards`` data shards exist in ``out``; return how many do."""
    import signal
    import time

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [str(BIN / script), *map(str, args)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + timeout
    while (time.time() < deadline and len(list((Path(out) / "data").glob("train-*.parquet"))) < shards
           and proc.poll() is None):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return len(list((Path(out) / "data").glob("train-*.parquet")))


def assert_lora_file_loaded(pipe, run_dir: Path, prefix: str = "transformer.") -> dict:
    """Check that ``pipe.load_lora_weights(run_dir)`` put exactly the trained LoRA file's weights in ``pipe``'s
    denoiser (every layer, nothing else, equal values) and that training moved lora_B (it starts at zero).
    Returns the file's weights under peft's names (``lora_A`` / ``lora_B``; the file may use diffusers'
    ``lora.down`` / ``lora.up``: train.lora_io.lora_layers, and diffusers converts either on load)."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    pipe.load_lora_weights(str(run_dir))
    assert pipe.get_active_adapters()
    saved = {k.removeprefix(prefix).replace(".lora.down.", ".lora_A.").replace(".lora.up.", ".lora_B."): v
             for k, v in load_file(Path(run_dir) / "pytorch_lora_weights.safetensors").items()}
    loaded = get_peft_model_state_dict(getattr(pipe, prefix.rstrip(".")), adapter_name=pipe.get_active_adapters()[0])
    lora_b = [k for k in saved if ".lora_B." in k]
    assert lora_b and set(loaded) == set(saved)  # every trained layer, and nothing else, is in the pipeline
    for k in saved:
        assert torch.equal(loaded[k].to(saved[k].dtype), saved[k]), k
    assert any(saved[k].abs().sum() > 0 for k in lora_b)  # lora_B starts at zero: training moved it
    return saved

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


def run_console(script: str, args: list[str], timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run an installed console script (e.g. mapo-data) as a real subprocess."""
    env = env if env is not None else {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([str(BIN / script), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


def read_table(folder: Path, subdir: str = "data"):
    import pyarrow.parquet as pq

    files = sorted((Path(folder) / subdir).glob("*.parquet"))
    assert files, f"no shards in {folder}/{subdir}"
    import pyarrow as pa

    return pa.concat_tables([pq.read_table(f) for f in files])


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.write_text("\n".join(prompts) + "\n")
    return path

"""`python -m bench`'s other subcommands (generate, precompute, eval, optimizer, layout-memory, profile): bad input is
one line before any work, the cheap ones run on the CPU and print their documented columns, and the prepared GPU
call's commands parse. Timings are never asserted."""
from __future__ import annotations

import json
import re

import pytest

from bench.__main__ import app
from pipeline.cli.options import iter_commands
from tests.helpers import run_cli


def test_every_benchmark_is_a_subcommand_whose_help_says_what_it_prints():
    names = [name for name, _ in iter_commands(app)]
    assert names == ["train", "generate", "precompute", "eval", "optimizer", "layout-memory", "profile"]
    for name in names:
        result = run_cli(app, [name, "--help"])
        assert result.exit_code == 0 and "Prints" in result.output, (name, result.output)


@pytest.mark.parametrize("args, message", [
    (["generate", "--resolution", "60"], "--resolution must be a positive multiple of 8"),
    (["generate", "--dtype", "fp8"], "Unknown --dtype 'fp8'"),
    (["precompute", "--flip", "sideways"], "Unknown --flip 'sideways'"),  # the stage's own declaration
    (["eval", "--metrics", "aesthetic,beauty"], "Unknown --metrics 'beauty'"),
    (["optimizer", "--chunks", "0"], "--chunks must be at least 1"),
    (["layout-memory", "--records", "0"], "--records must be at least 1"),
    (["profile", "--configuration", "ppo"], "Unknown --configuration 'ppo'"),
])
def test_bad_options_are_one_line(args, message):
    """Refused before any model loads or input is written (these benchmarks write only to temporary folders)."""
    result = run_cli(app, args)
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output


def test_optimizer_prints_a_line_per_chunk_size():
    result = run_cli(app, ["optimizer", "--model", "tiny-sdxl", "--device", "cpu", "--max-values", "20000",
                           "--chunks", "1,4096", "--steps", "1"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert re.match(r"tiny-sdxl: \d+ weight tensors, 0\.0M values, cpu, torch threads \d+; default chunk", lines[0])
    assert re.fullmatch(r"chunk +1: +[\d.]+ ms/step, 1\.00x per weight", lines[1])
    assert re.fullmatch(r"chunk +4096: +[\d.]+ ms/step, [\d.]+x per weight", lines[2])


def test_layout_memory_measures_each_case_in_its_own_process():
    """Each case's peak is its own process's, not the torch-holding parent's (Linux carries a parent's ru_maxrss
    into a child): the floor is that of the imports a reading stage needs, well under torch's ~600 MB."""
    result = run_cli(app, ["layout-memory", "--records", "300", "--samples", "20", "--image-kb", "1"])
    assert result.exit_code == 0, result.output
    header, *cases = result.output.strip().splitlines()
    assert header.startswith("# 300 HPDv3 records:")
    rows = {c["mode"]: c for c in map(json.loads, cases)}
    assert {m: rows[m]["rows"] for m in rows} == {"json": 300, "json-load": 300, "tar": 20}
    for row in rows.values():
        assert 0 < row["floor_rss_mb"] <= row["peak_rss_mb"] < 300, row


def test_sdxl_bytes_per_pair_from_the_storage_format():
    from bench.precompute import sdxl_bytes_per_pair

    assert sdxl_bytes_per_pair() == 2 * 4 * 128 * 128 * 2 == 262_144  # two fp16 latents of 4 x 128 x 128
    assert sdxl_bytes_per_pair(views=2) == sdxl_bytes_per_pair(stats=True) == 2 * 262_144


def test_the_gpu_sessions_generate_command_parses(monkeypatch):
    """scripts/gpu_session.py's generation section calls `python -m bench generate` with options it declares."""
    from tests.bench.test_bench import _gpu_session

    session = _gpu_session(monkeypatch)
    for model in ("sdxl-arch", "tiny-sdxl"):
        cmd = session._generate_command(session.argparse.Namespace(model=model))
        assert cmd[1:4] == ["-m", "bench", "generate"]
        result = run_cli(app, [*cmd[3:], "--help"])  # parses every option, runs nothing
        assert result.exit_code == 0, result.output

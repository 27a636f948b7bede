"""Test session setup: offline hub, quiet progress bars, one shared cache of built-in models."""
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["MAPO_NO_PROGRESS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch thread per test process, set before torch is imported and inherited by the CLIs the tests start:
# `make test` runs one pytest-xdist worker per core, and tiny models gain nothing from more threads while
# busy cores make torch's spinning threads many times slower (test_generate's kill-and-resume test, whose CLIs
# ran with the default threads: 343 s serially, 141 s with one thread under pytest -n 2, on 2 cores loaded by
# other jobs). Thread counts change CPU kernels' last bits, so every process of the suite uses the same count.
# Tiny built-in models are built once per checkout (under a file lock).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MAPO_CACHE", str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "mapo"))

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_torch_thread():
    """2 shared cores: torch's default threads spin against each other and other jobs (10-20x slower
    for tiny models). Module-wide, so a module's images are all made with one thread count (thread
    counts change CPU kernels' last bits). Opt in per module or folder; subprocess tests set
    OMP_NUM_THREADS instead."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

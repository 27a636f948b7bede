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


# Summed seconds (setup + call) of the slowest modules on a 2-core machine (CI run of `make test`, pytest
# --durations), heaviest first. Under `--dist loadscope` each module is one unit of work that a worker pulls when
# it runs low; a heavy module pulled last keeps its worker busy while the other has nothing left (a tail of a
# minute or more), so they are handed out first and the many quick modules fill the end. xdist's own order (its
# --loadscope-reorder, on by default: most tests first) would put these few-test modules last; it is turned off in
# pytest_configure below so that this order is the one the workers pull. Rough figures suffice: only the order
# counts. A module not listed weighs nothing and keeps its collection order after these.
HEAVY_MODULES = {
    "tests/train/test_fsdp.py": 280,
    "tests/train/test_world_learning.py": 110,
    "tests/stages/test_generate.py": 120,
    "tests/train/test_world_learning_flow.py": 55,
    "tests/bench/test_estimate.py": 75,
    "tests/pipeline/test_world_flow.py": 70,
    "tests/stages/test_label.py": 60,
    "tests/stages/test_precompute.py": 55,
    "tests/bench/test_bench.py": 50,
    "tests/train/test_checkpoint.py": 25,
    "tests/stages/test_reward_label.py": 30,
    "tests/train/test_bf16_weights.py": 25,
    "tests/pipeline/test_world_model.py": 20,
    "tests/train/test_trainer.py": 20,
}


def pytest_configure(config):
    """Keep the collection order (heaviest modules first, see HEAVY_MODULES) when xdist hands out modules."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(session, config, items):
    """Heaviest modules first (HEAVY_MODULES); tests keep their order within a module, other modules theirs."""
    def weight(item):
        return HEAVY_MODULES.get(item.nodeid.split("::", 1)[0], 0)

    items.sort(key=lambda item: -weight(item))  # stable: modules stay contiguous, tests in their order

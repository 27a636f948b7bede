"""Where work runs: this process's rank among N (accelerate or single) and its shards.

Shards are the unit of work: shard k always holds the same slice of the input, and rank r
takes shards r, r+N, r+2N, ... so any process count yields the same set of shards.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessInfo:
    index: int = 0
    count: int = 1

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def tag(self, name: str) -> str:
        """``name``, with this process's rank when there are several (progress bar labels)."""
        return f"{name}[{self.index}]" if self.count > 1 else name

    def my_shards(self, shards: list[int]) -> list[int]:
        return [k for k in shards if k % self.count == self.index]


def _launched_multi_process() -> bool:
    return launched_processes() > 1


def runs_on_cpu() -> bool:
    """True when accelerate will put this process on the CPU: no CUDA, or ``ACCELERATE_USE_CPU`` set.

    Answers without starting accelerate (no process group), so a stage can refuse a CPU-only
    impossibility (fp16 mixed precision) before it touches its output folder.
    """
    import torch

    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.cuda.is_available()


def _state():
    from accelerate import PartialState

    # Without cpu=True, PartialState on a machine with no CUDA ignores the launcher's world
    # size and reports a single process: every rank would then do all the work.
    return PartialState(cpu=runs_on_cpu())


def current_process() -> ProcessInfo:
    """Rank and world size; uses accelerate's state when launched with several processes."""
    if not _launched_multi_process():
        return ProcessInfo()
    state = _state()
    return ProcessInfo(state.process_index, state.num_processes)


def accelerator_device(default: str = "auto") -> str:
    """The device this process should use: its own GPU under accelerate, else ``default``.

    Under several processes, "auto" and a bare "cuda" both mean this process's own GPU (a bare
    "cuda" would otherwise put every rank on cuda:0); an explicit "cuda:N" or "cpu" is kept.
    """
    if default not in ("auto", "cuda") or not _launched_multi_process():
        return default
    return str(_state().device)


def wait_for_everyone() -> None:
    if _launched_multi_process():
        _state().wait_for_everyone()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def requested_engine() -> str | None:
    """The sharding engine ``accelerate launch`` (its flags or a config file) asked for, read from the environment
    the launcher sets: "deepspeed" (``ACCELERATE_USE_DEEPSPEED``), "fsdp1" / "fsdp2" (``ACCELERATE_USE_FSDP`` with
    ``FSDP_VERSION``, whose default is accelerate's 1), or None (plain data parallel or one process).

    Read without starting accelerate, so a run can refuse an engine it cannot honour before it touches its output
    folder; on the CPU accelerate itself would ignore both requests and run DDP (``accelerate/state.py`` enables
    FSDP and DeepSpeed only on accelerators).
    """
    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    if _env_flag("ACCELERATE_USE_FSDP"):
        return f"fsdp{os.environ.get('FSDP_VERSION', '1')}"
    return None


def launched_processes() -> int:
    """The number of processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))

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

    def my_shards(self, shards: list[int]) -> list[int]:
        return [k for k in shards if k % self.count == self.index]


def _launched_multi_process() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current_process() -> ProcessInfo:
    """Rank and world size; uses accelerate's state when launched with several processes."""
    if not _launched_multi_process():
        return ProcessInfo()
    from accelerate import PartialState

    state = PartialState()
    return ProcessInfo(state.process_index, state.num_processes)


def accelerator_device(default: str = "auto") -> str:
    """The device this process should use: its own GPU under accelerate, else ``default``."""
    if default != "auto" or not _launched_multi_process():
        return default
    from accelerate import PartialState

    return str(PartialState().device)


def wait_for_everyone() -> None:
    if _launched_multi_process():
        from accelerate import PartialState

        PartialState().wait_for_everyone()

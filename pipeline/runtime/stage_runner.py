"""One runner for every sharded stage: claim, progress, totals, timing, barrier, finalize.

A stage (generate, label, precompute) says what its output is and how to process ONE shard; the
runner owns the rest, the same way for all of them and for any number of processes:

1. claim the output folder on the main process (refuse another configuration, clear with
   ``--overwrite``), wait for everyone, take this rank's shards ``r, r+N, ...`` and drop the ones a
   previous run finished (:meth:`pipeline.data.shards.ShardedOutput.start`);
2. ``setup(todo)``: load models (a stage may skip it when ``todo`` is empty);
3. ``process_shard(k, pool, bar)`` for each shard to do, in order, with a 2-thread pool for
   overlapping encode/write work and the progress bar; it returns the shard's counters, or a
   ``Future`` of them when the write is still running;
4. sum the counters, close the bar, say truncated prompts once, wait for everyone;
5. on the main process, ``finalize`` the manifest (summed counters of all shards on disk).
"""
from __future__ import annotations

import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from pipeline.cli.progress import progress_bar
from pipeline.data.shards import ShardedOutput, add_counts
from pipeline.runtime.distributed import ProcessInfo, wait_for_everyone


@dataclass
class ShardedStage:
    """What one stage supplies to :func:`run_sharded`."""

    name: str  # progress-bar and message tag: "generate"
    output: ShardedOutput
    process_shard: Callable[[int, ThreadPoolExecutor, Any], "dict | Future"]
    count_items: Callable[[list[int]], int]  # items in these shards (the progress bar's total)
    unit: str = "pair"
    setup: Callable[[list[int]], None] | None = None  # called after the claim with this rank's shards to do
    manifest_extra: Callable[[], dict] | None = None  # more manifest entries, main process, at finalize
    overwrite: bool = False


@dataclass
class ShardedRun:
    """What :func:`run_sharded` did on this process."""

    mine: list[int]  # this rank's shards
    todo: list[int]  # those of them processed now (the rest were done before)
    totals: dict = field(default_factory=dict)  # counters summed over ``todo``
    loop_seconds: float = 0.0  # processing the shards (after setup)
    summed: dict | None = None  # counters of every finished shard (main process only)

    @property
    def skipped(self) -> int:
        return len(self.mine) - len(self.todo)


def run_sharded(stage: ShardedStage, proc: ProcessInfo) -> ShardedRun:
    """Run ``stage`` on this process's pending shards (see the module docstring for the order).

    Raises:
        UserError: the output folder holds another configuration (without ``overwrite``) or is not
            a mapo-data output; whatever ``setup`` or ``process_shard`` raise.
    """
    from pipeline.models.conditioning import report_truncation, reset_truncation

    reset_truncation()
    out = stage.output
    mine, todo = out.start(proc, overwrite=stage.overwrite)
    run = ShardedRun(mine, todo)
    if stage.setup is not None:
        stage.setup(todo)
    if todo:
        bar = progress_bar(total=stage.count_items(todo), desc=proc.tag(stage.name), unit=stage.unit)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = [stage.process_shard(k, pool, bar) for k in todo]
            for result in results:
                add_counts(run.totals, result.result() if isinstance(result, Future) else result)
        run.loop_seconds = time.perf_counter() - t0
        bar.close()
        report_truncation(proc.tag(stage.name))
    wait_for_everyone()
    if proc.is_main:
        run.summed = out.finalize(stage.manifest_extra() if stage.manifest_extra else None)
    return run


# The column a per-row reason starts with ("jpg_0: "), dropped by reason_kind.
_COLUMN_PREFIX = re.compile(r"^[\w.-]+: ")
# What to do about a top reject reason (its kind), added to the nothing-kept warning.
REASON_HINTS = {
    "image file not readable": "the image files were not found: extract the image archive next to the JSON "
                               "(HPDv3's images.tar.gz.*) or pass --image-root",
}


def reason_kind(reason: str) -> str:
    """A reject reason without its per-row detail: the key reasons are counted and grouped by.

    ``'jpg_1: image file not readable (FileNotFoundError: /x/0_a.png)'`` -> ``'image file not readable'``;
    ``'jpg_0: decompression bomb guard: ...'`` -> ``'decompression bomb guard'``; a reason without detail
    (``'tie'``, ``'scores too close'``) is its own kind.
    """
    text = _COLUMN_PREFIX.sub("", str(reason), count=1)
    return re.split(r" \(|: ", text, maxsplit=1)[0]


def nothing_kept_warning(stage: str, seen: int, kept: int, reasons: dict, root, unit: str = "row") -> str | None:
    """The one-line warning of a stage that read ``seen`` items and kept none, else None.

    Keeping nothing is not an error (an input of ties only is valid) but must never be silent: the line names
    the top three reject ``reasons`` (reason -> count, most frequent first), where the rejected rows are
    (``<root>/rejects/``) and the command that summarises them (``mapo-data inspect``), as ``label`` does;
    when the top reason has a known fix (:data:`REASON_HINTS`: image files not extracted) the line says it.
    """
    from pipeline.cli.formatting import count

    if not seen or kept:
        return None
    top = sorted(((n, r) for r, n in (reasons or {}).items() if n), key=lambda nr: (-nr[0], nr[1]))
    why = ", ".join(f"{n} {r}" for n, r in top[:3]) + (f", {len(top) - 3} other" if len(top) > 3 else "")
    hint = REASON_HINTS.get(reason_kind(top[0][1])) if top else None
    return (f"warning: {stage} kept 0 of {count(seen, unit)} ({why or 'no reason recorded'}); "
            + (f"{hint}; " if hint else "")
            + f"the rejected rows are in {root}/rejects/, `mapo-data inspect {root}` summarises them")

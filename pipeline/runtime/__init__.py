"""Runtime: where and how work runs.

- :mod:`.distributed`: this process's rank among N and its shards.
- :mod:`.stage_runner`: the one runner of every sharded stage (claim, progress, totals, barrier, finalize).
- :mod:`.seeds`: per-image seeds independent of batch size, process count and shard order.
- :mod:`.batch_invariance`: the same image bits whatever the batch size.
"""

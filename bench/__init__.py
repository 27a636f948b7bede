"""``python -m bench``: every benchmark of the project, one subcommand each. See docs/benchmarks.md.

``train``: MaPO vs Diffusion-DPO vs SFT training steps, measured side by side. One run times each
configuration (same model, resolution, batch and data) in its own process, records its peak memory,
finds the largest batch that fits (GPU), counts the mapo step's FLOPs, and prints one table plus a
JSON file with ratios against DPO and against encoding images and captions inside the step;
``--estimate`` gives the same memory and FLOPs on fake tensors, on a CPU.

Modules of ``train``: config (what to run), data (the shared synthetic batches), step (one configuration's
timed optimizer step, built from the trainer's own pieces), search (largest batch that fits),
flops (FLOP count and MFU), worker (one configuration in a subprocess), runner (orchestration),
report (ratios, table, environment), estimate (the ``--estimate`` run and its table), fake (counting
bytes and kernel launches on fake tensors), engines (per-GPU memory under ddp / fsdp2).

The other subcommands, one module each (its options dataclass and the function that prints its lines):
generate, precompute (the data stages' throughput), scoring (``eval``: images/s per metric), optimizer
(BF16AdamW's update by chunk size), layout_memory (``layout-memory``: peak RSS reading large public inputs),
profile (torch.profiler of one configuration's step).
"""

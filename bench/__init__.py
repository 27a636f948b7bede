"""``python -m bench``: MaPO vs Diffusion-DPO vs SFT training steps, measured side by side.

One run times each configuration (same model, resolution, batch and data) in its own
process, records its peak memory, finds the largest batch that fits (GPU), counts the mapo
step's FLOPs, and prints one table plus a JSON file with ratios against DPO and against
encoding images and captions inside the step. See docs/benchmarks.md.

Modules: config (what to run), data (the shared synthetic batches), step (one configuration's
timed optimizer step, built from the trainer's own pieces), search (largest batch that fits),
flops (FLOP count and MFU), worker (one configuration in a subprocess), runner (orchestration),
report (ratios, table, environment).
"""

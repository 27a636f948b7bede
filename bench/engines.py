"""Per-GPU memory of a training step under a distributed engine, from the one-process estimate (bench/estimate.py).

The one-process estimate counts the step's live bytes by kind at its peak (weights, gradients, optimizer state,
activations). What each engine of ``mapo-train`` (train/sharding.py) changes on each of N GPUs:

- "single": nothing.
- "ddp": every GPU holds the whole model, and DDP's reducer keeps its gradient buckets beside the gradients
  (accelerate's default ``gradient_as_bucket_view=False``): gradients count twice.
- "fsdp2": weights (the frozen DPO/KTO reference too: it is sharded like the policy), gradients and AdamW state are
  split over the N GPUs (torch ``fully_shard``); activations are not. On top, the transient unsharded weights: the
  root unit's (everything outside a block, gathered for the whole forward and backward), and two blocks' (the one
  computing and the one prefetched), each in the compute dtype (the FSDP2 mixed-precision policy's ``param_dtype``),
  plus the unsharded gradients of the largest block and the root before their reduce-scatter, in fp32
  (``reduce_dtype``, see train/sharding.py). Blocks are the UNet's ``_no_split_modules`` (its ResNet and
  transformer blocks), the units mapo-train wraps by default.

A model, not a measurement: allocator fragmentation and NCCL's buffers are not in it.
"""
from __future__ import annotations

ENGINES = ("single", "ddp", "fsdp2")


def fsdp2_unit_bytes(model) -> tuple[int, int]:
    """``(largest block, root)``: the weight bytes of the largest FSDP unit and of the root's own weights (those in
    no block) when ``model`` is wrapped as mapo-train wraps it (one unit per ``_no_split_modules`` class, bottom-up:
    a block inside a block is its own unit). Works on fake or meta tensors (sizes only)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    owner: dict[int, int] = {}  # id(parameter) -> id(its innermost unit); 0: the root
    units = [m for m in model.modules() if type(m).__name__ in names and m is not model]
    for unit in units:  # outer blocks first (modules() is pre-order): inner ones overwrite them
        for p in unit.parameters():
            owner[id(p)] = id(unit)
    sizes: dict[int, int] = {}
    for p in model.parameters():
        key = owner.get(id(p), 0)
        sizes[key] = sizes.get(key, 0) + p.numel() * p.element_size()
    root = sizes.pop(0, 0)
    return (max(sizes.values()) if sizes else 0), root


def per_process_bytes(by_category: dict, engine: str, num_processes: int, units: tuple[int, int] = (0, 0),
                      compute_bytes: int = 4, weight_bytes: int = 4) -> dict:
    """Bytes by category on each of ``num_processes`` GPUs under ``engine``, from the one-process ``by_category``
    (weights, gradients, optimizer, activations); fsdp2 adds "gathered" (the transient unsharded weights and
    gradients). ``units``: :func:`fsdp2_unit_bytes`, in the weights' dtype of ``weight_bytes`` bytes per value;
    ``compute_bytes``: bytes per value of the compute dtype (2 for bf16 mixed precision).

    Raises ValueError for an unknown engine or fewer than one process.
    """
    if engine not in ENGINES or num_processes < 1:
        raise ValueError(f"engine must be one of {ENGINES} with num_processes >= 1, got {engine!r}, {num_processes}")
    out = dict(by_category)
    if engine == "single" or num_processes == 1:
        return out
    if engine == "ddp":
        out["gradients"] = 2 * out.get("gradients", 0)
        return out
    n = num_processes
    for k in ("weights", "gradients", "optimizer"):
        out[k] = -(-out.get(k, 0) // n)
    largest, root = units
    gathered_params = (2 * largest + root) * compute_bytes // weight_bytes
    unsharded_grads = (largest + root) * 4 // weight_bytes  # reduced in fp32
    out["gathered"] = gathered_params + unsharded_grads
    return out


def per_process_estimates(cfg, *estimates):
    """``estimates`` (bench.estimate.Estimate, one process) as each of ``cfg.num_processes`` GPUs sees them under
    ``cfg.engine`` (:func:`per_process_bytes`), then the row's ``engine`` record. The setup peak under fsdp2 is the
    sharded weights' (mapo-train builds the models on the CPU and shards them onto the GPUs unit by unit)."""
    from dataclasses import replace

    engine, n = cfg.engine, cfg.num_processes
    compute_bytes = 2 if cfg.dtype == "bf16" else 4
    out = []
    for est in estimates:
        parts = per_process_bytes(est.by_category, engine, n, est.fsdp2_units, compute_bytes)
        peak = est.peak_bytes + sum(parts.values()) - sum(est.by_category.values())
        setup = est.setup_bytes if engine != "fsdp2" else parts["weights"] + parts["gathered"]
        out.append(replace(est, peak_bytes=peak, by_category=parts, setup_bytes=setup))
    return (*out, {"engine": engine, "num_processes": n})


def engine_refusal(engine: str, conf) -> str | None:
    """Why mapo-train refuses configuration ``conf`` (bench.config.Configuration) under ``engine``, or None: under
    fsdp2, LoRA and the options that work on whole weights (train/sharding.py's refusals)."""
    if engine != "fsdp2":
        return None
    options = dict(conf.options)
    if conf.lora or options.get("optimizer_in_backward") or options.get("master_weights") == "bf16" \
            or options.get("use_8bit_adam") or options.get("compile"):
        return "not estimated (mapo-train refuses it under fsdp2)"
    return None

"""``python -m bench train --estimate``: peak memory and FLOPs of each configuration's step, on a CPU, allocating
nothing.

The configuration's :class:`bench.step.BenchStep` (the trainer's own model setup, loss and
update) is built and run for two optimizer steps under ``torch._subclasses.FakeTensorMode``:
every tensor has its real shape, dtype and storage size but no data, so SDXL's 2.6B-parameter
UNet costs no memory and each operator only computes shapes. :class:`LiveBytes`, a
``TorchDispatchMode`` (bench/fake.py), counts the bytes of every live tensor storage (freed through weak
references when the last tensor using a storage goes, as the CUDA caching allocator would see it)
by kind: weights (parameters and buffers), gradients, optimizer state, and activations (everything
else: saved activations, temporaries, the batch). ``FlopCounterMode`` counts the second step's
FLOPs. Two batch sizes give the memory one more pair costs, hence the largest batch that fits
each card.

What it does not see: the CUDA context and cuBLAS/cuDNN workspaces (outside the allocator's
count), fragmentation of the caching allocator, and kernels whose workspace differs between the
CPU ops run here and CUDA's (attention is the CPU flash kernel, whose saved tensors match CUDA
flash attention's). Autocast is the CPU's, whose bf16 op list covers the same convolutions,
matmuls and linears as CUDA's. Validated against H200 measurements in docs/benchmarks.md.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

from .config import CONFIGURATIONS, BenchConfig
from .engines import engine_refusal, fsdp2_unit_bytes, per_process_estimates
from .fake import CATEGORIES, LiveBytes, bitsandbytes_stand_in, fake_mode, real_flow_schedulers, weak_memo

MIB, GIB = 2**20, 2**30
DEFAULT_GPU_MEMORY_GB = (24.0, 48.0, 80.0, 141.0)
# Kept free on every card when fitting batches: CUDA context, cuBLAS/cuDNN workspaces, fragmentation.
CARD_RESERVE_GIB = 1.5


@dataclass
class Estimate:
    """One configuration at one batch size: peak bytes by category (at the peak of their sum) and FLOPs."""

    batch_size: int
    peak_bytes: int
    by_category: dict = field(default_factory=dict)  # category -> bytes at the peak
    # forward, backward, executed, model (bench.flops.count_step_flops's keys)
    flops: dict = field(default_factory=dict)
    trainable_parameters: int = 0
    seconds: float = 0.0
    setup_bytes: int = 0  # peak while the models are built (fp32 build of a bf16 LoRA base), before the steps
    # Operators one optimizer step dispatches that compute a tensor (:func:`bench.fake.launches_kernel`), forward,
    # backward and update: about the GPU kernels it launches (a fused AdamW or an SDPA is one; CPU-only
    # decompositions may differ). Where a step is launch-bound (small batches on a fast GPU), time follows this
    # count more than FLOPs.
    ops_per_step: int = 0
    fsdp2_units: tuple = (0, 0)  # bench.engines.fsdp2_unit_bytes of the trained UNet: (largest block, root) bytes


def _fake_items(unet_config: dict, batch_size: int, resolution: int):
    """``batch_size`` items shaped like ``bench.data.precomputed_items``'s (fp16, as precompute stores them).

    UNet families: latents [2, C, R/8, R/8], prompt_embeds [77, cross_attention_dim], SDXL's pooled and time ids.
    SD3: latents [2, 16, R/8, R/8], prompt_embeds [77 + 256, joint_attention_dim] (CLIP pair and T5 at the
    pipeline's default ``max_sequence_length``: pipeline.families.sd3), pooled [pooled_projection_dim]. Flux:
    latents [2, 16, R/8, R/8] (the family's ``latent_channels``, in_channels / 4), prompt_embeds [512, D] (T5 only;
    ``ModelFamily.prompt_tokens``)."""
    import torch

    from pipeline.families import family_of_denoiser

    from .data import PairItems, time_ids

    fam = family_of_denoiser(dict(unet_config))
    c, h = fam.latent_channels(unet_config), resolution // 8
    if fam.flow:
        tokens, width = fam.prompt_tokens(), int(unet_config["joint_attention_dim"])
        pooled = int(unet_config["pooled_projection_dim"])
    else:
        tokens, width = 77, int(unet_config["cross_attention_dim"])
        pooled = None
        if unet_config.get("addition_embed_type") == "text_time":
            pooled = (int(unet_config["projection_class_embeddings_input_dim"])
                      - 6 * int(unet_config["addition_time_embed_dim"]))
    items = []
    for i in range(batch_size):
        item = {"latents": torch.empty(2, c, h, h, dtype=torch.float16),
                "prompt_embeds": torch.empty(tokens, width, dtype=torch.float16), "index": i}
        if pooled is not None:
            item["pooled_prompt_embeds"] = torch.empty(pooled, dtype=torch.float16)
        if fam.time_ids:
            item["add_time_ids"] = time_ids(resolution)
        items.append(item)
    return PairItems(items, batch_size)


def estimate_step(cfg: BenchConfig, name: str, batch_size: int, steps: int = 2, fake: bool = True,
                  count_flops: bool = True) -> Estimate:
    """Peak memory and FLOPs of configuration ``name`` at ``batch_size`` pairs, run on fake tensors.

    ``cfg`` must be resolved (:meth:`BenchConfig.resolved`). Runs ``steps`` optimizer steps (the
    first allocates AdamW's state, so the peak needs two); FLOPs (``count_flops``) are those of one
    more step, not part of the memory count, split as in :func:`bench.flops.count_step_flops`
    (zeros without ``count_flops``). ``fake=False`` runs the same count on real tensors (the
    model's real weights, CPU memory and time): the check that fake tensors change nothing.
    Raises whatever the step raises (e.g. a model that cannot be found: ``ModelNotFoundError``).
    """
    import contextlib

    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.data.latent_shards import PairSampler
    from pipeline.models.loading import check_model_available
    from train.data import TrainData, batch_stream

    from . import flops as _flops  # noqa: F401  (registers the CPU flash-attention FLOP formula)
    from .data import PairItems
    from .step import BenchStep, StepSpec

    check_model_available(cfg.model)  # a built-in tiny model is written to its cache folder now, not on fake tensors
    conf = CONFIGURATIONS[name]
    spec = StepSpec(model=cfg.model, objective=conf.objective, lora_rank=cfg.lora_rank if conf.lora else 0,
                    in_step=False, device="cpu", dtype=cfg.dtype, resolution=cfg.resolution, batch_size=batch_size,
                    gradient_checkpointing=cfg.gradient_checkpointing, seed=cfg.seed, options=conf.options)
    t0 = time.perf_counter()
    live = LiveBytes()
    mode = fake_mode() if fake else None
    options = dict(conf.options)
    stand_in = bitsandbytes_stand_in() if options.get("use_8bit_adam") else contextlib.nullcontext()
    with mode or contextlib.nullcontext(), warnings.catch_warnings(), stand_in:
        # Tensor.__deepcopy__ asks a fake tensor for its data pointer (a deprecation warning, harmless here).
        warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
        # The setup is counted too, as "weights": the CUDA bench's max_memory_allocated covers it.
        live.phase = "weights"
        with live.mode() if fake else contextlib.nullcontext(), real_flow_schedulers():
            step = BenchStep(spec, PairItems([{}], batch_size), weights=not fake)
        live.phase = "activations"
        inner = getattr(step.optimizer, "inner", step.optimizer)
        if fake and hasattr(inner, "chunk_numel"):  # BF16AdamW: a CUDA run's chunks (fake tensors are on the CPU)
            from train.optimizers import default_chunk_numel

            inner.chunk_numel = default_chunk_numel("cuda")
        offloaded = step.models.reference if options.get("reference_device") == "cpu" else None
        for t in (*offloaded.parameters(), *offloaded.buffers()) if offloaded is not None else ():
            live.discount(t)  # in CPU memory; one layer at a time visits the card (not counted)
        # Every UNet is built and cast on the CPU, then moved (train.model_setup._to casts a LoRA base before the
        # move since 2026-12-01; before, its fp32 copy on the card was a 9.6 GiB SDXL peak of its own): the card
        # sees the final weights only.
        setup_peak = live.total
        live.peak_total, live.peak = 0, dict.fromkeys(CATEGORIES, 0)  # the step's own peak from here
        if mode is not None:
            weak_memo(mode)
        items = _fake_items(dict(step.unet.config), batch_size, cfg.resolution)
        step.stream = batch_stream(TrainData(items, PairSampler(batch_size, batch_size, cfg.seed)), step.device)
        for module in (step.unet, step.models.reference if offloaded is None else None):
            for t in (*module.parameters(), *module.buffers()) if module is not None else ():
                live.add(t, "weights")
        if options.get("optimizer_in_backward"):
            # The real hooks run (each bucket of gradients is freed after its update); this observer, called
            # as each gradient is ready, tags it while it lives.
            step.optimizer.grad_observers.append(lambda p: live.retag(p.grad, "gradients"))
        else:
            for p in step.params:
                p.register_post_accumulate_grad_hook(lambda p: live.retag(p.grad, "gradients"))

        def enter_optimizer(*_):
            live.phase = "optimizer"

        def leave_optimizer(*_):
            live.phase = "activations"

        # ``inner``: in backward, the optimizer stepped on each bucket
        hooks = [inner.register_step_pre_hook(enter_optimizer), inner.register_step_post_hook(leave_optimizer)]
        with live.mode():
            for i in range(steps):
                ops_before = live.ops  # the last step's count: the first also creates AdamW's state
                step.apply(step.forward(step.next_batch(), i).loss)
        ops = live.ops - ops_before
        fwd = bwd = 0
        model = {"model": 0, "model_flops_method": "not counted"}
        if count_flops:
            # One more step, outside the memory count: FlopCounterMode's module hooks keep activations
            # alive through the backward (tiny-sdxl with checkpointing: 28 MiB of activations at the peak
            # instead of 10), which would inflate the peak.
            batch = step.next_batch()
            with FlopCounterMode(display=False) as counter:
                out = step.forward(batch, steps)
            fwd = counter.get_total_flops()
            with FlopCounterMode(display=False) as counter:
                step.apply(out.loss)
            bwd = counter.get_total_flops()
            del out
            model = _flops.model_flops(step, batch, steps + 1, fwd + bwd)
            del batch
        for h in hooks:
            h.remove()
    return Estimate(batch_size=batch_size, peak_bytes=live.peak_total, by_category=dict(live.peak),
                    setup_bytes=setup_peak,
                    flops={"forward": int(fwd), "backward": int(bwd), "executed": int(fwd + bwd), **model},
                    trainable_parameters=step.trainable_parameters, seconds=time.perf_counter() - t0, ops_per_step=ops,
                    fsdp2_units=fsdp2_unit_bytes(step.unet))


def largest_batch_for(card_gib: float, peak_at_1: float, per_pair: float,
                      reserve_gib: float = CARD_RESERVE_GIB) -> int | None:
    """Largest batch ``b`` with ``peak_at_1 + (b - 1) * per_pair <= card - reserve`` (all in bytes but the GiB
    arguments); 0 when not even one pair fits, None when one more pair adds no measurable memory (no bound
    found; tiny models). Memory is linear in the batch here (activations scale with it; weights, gradients
    and AdamW state do not), as :func:`estimate_configuration` measures it."""
    room = card_gib * GIB - reserve_gib * GIB - peak_at_1
    if room < 0:
        return 0
    return 1 + int(room // per_pair) if per_pair > 0 else None


def estimate_configuration(cfg: BenchConfig, name: str, gpu_memory_gb) -> dict:
    """The JSON row of one configuration: the estimate at ``cfg.batch_size`` and at one pair more (for the
    per-pair memory), the largest batch for each card in ``gpu_memory_gb`` (GiB, less
    :data:`CARD_RESERVE_GIB`). Memory figures in MiB (2**20 bytes), FLOPs per optimizer step."""
    main = estimate_step(cfg, name, cfg.batch_size)
    more = estimate_step(cfg, name, cfg.batch_size + 1, count_flops=False)
    main, more, engine = per_process_estimates(cfg, main, more)
    per_pair = max(more.peak_bytes - main.peak_bytes, 0)
    peak_at_1 = max(main.peak_bytes - (cfg.batch_size - 1) * per_pair, main.setup_bytes)
    return {
        "label": CONFIGURATIONS[name].label,
        "peak_mem_mb": max(main.peak_bytes, main.setup_bytes) / MIB,  # as max_memory_allocated: setup included
        "step_peak_mem_mb": main.peak_bytes / MIB,
        "setup_peak_mem_mb": main.setup_bytes / MIB,
        "mem_kind": "estimate",
        "engine": engine,
        "mem_mb": {k: v / MIB for k, v in main.by_category.items()},
        "per_pair_mem_mb": per_pair / MIB,
        "batch_size": cfg.batch_size,  # the batch the estimate ran at (and one more): the max batch's base
        "max_batch_by_gpu_gb": {f"{g:g}": largest_batch_for(g, peak_at_1, per_pair) for g in gpu_memory_gb},
        "flops": main.flops,
        "ops_per_step": main.ops_per_step,
        "trainable_parameters": main.trainable_parameters,
        "estimate_seconds": main.seconds + more.seconds,
    }


def run_estimate(cfg: BenchConfig, gpu_memory_gb=DEFAULT_GPU_MEMORY_GB) -> dict:
    """Estimate every configuration of ``cfg`` (mapo-instep is left out: its encoders run under no_grad
    and are not part of the training step's memory here; so are the compiled ones: inductor's kernels
    do not run on fake tensors); returns the bench's result dict (also written to
    ``cfg.output``) with ``settings.estimate = true`` and per row ``mem_kind: "estimate"``."""
    import sys

    from .report import add_ratios, environment
    from .runner import write_result

    cfg = cfg.resolved()
    t_start = time.perf_counter()
    rows = {}
    for i, name in enumerate(cfg.configurations, 1):
        if CONFIGURATIONS[name].in_step:
            rows[name] = {"label": CONFIGURATIONS[name].label, "error": "not estimated (in-step encoders)"}
            continue
        refused = engine_refusal(cfg.engine, CONFIGURATIONS[name])
        if refused:
            rows[name] = {"label": CONFIGURATIONS[name].label, "error": refused}
            continue
        if dict(CONFIGURATIONS[name].options).get("compile"):
            rows[name] = {"label": CONFIGURATIONS[name].label, "error": "not estimated (torch.compile: measure it)"}
            continue
        print(f"bench --estimate: [{i}/{len(cfg.configurations)}] {name} ...", file=sys.stderr, flush=True)
        rows[name] = estimate_configuration(cfg, name, gpu_memory_gb)
    import torch

    result = {
        "format": "mapo-bench/1",
        "settings": {**{k: v for k, v in vars(cfg).items() if k not in ("output", "worker_timeout_s")},
                     "device": "fake (FakeTensorMode on the CPU)", "estimate": True,
                     "gpu_memory_gb": list(gpu_memory_gb), "card_reserve_gib": CARD_RESERVE_GIB},
        "environment": environment(torch.device("cpu"), cfg.dtype),
        "configurations": rows,
        "ratios": add_ratios(rows),
        "seconds": time.perf_counter() - t_start,
    }
    write_result(result, cfg.output)
    return result


EXTRAPOLATION_LIMIT = 4  # a max batch more than this many times the estimated batch is marked in the table


def _max_batch_cell(found: int | None, measured_at: int) -> str:
    if found is None:
        return "no bound"
    return f"{found}*" if found > EXTRAPOLATION_LIMIT * measured_at else str(found)


def format_estimate(result: dict) -> str:
    """The estimate's table (Markdown): peak GiB and its parts, GiB per extra pair, TFLOP and operators per step,
    max batch per card."""
    s, rows = result["settings"], result["configurations"]
    cards = [f"{g:g}" for g in s["gpu_memory_gb"]]
    parts = CATEGORIES + (("gathered",) if s.get("engine") == "fsdp2" else ())  # bench.engines: unsharded units
    head = ["configuration", "peak GiB", "step peak", "weights", "grads", "optimizer", "activations",
            *parts[len(CATEGORIES):], "+GiB/pair", "TFLOP/step", "ops/step"]
    head += [f"max batch {c} GB" for c in cards]
    lines = [head]
    for name, r in rows.items():
        if "error" in r:
            lines.append([name, r["error"]] + [""] * (len(head) - 2))
            continue
        m = r["mem_mb"]
        lines.append([name, f"{r['peak_mem_mb'] / 1024:.2f}", f"{r['step_peak_mem_mb'] / 1024:.2f}"]
                     + [f"{m[k] / 1024:.2f}" for k in parts]
                     + [f"{r['per_pair_mem_mb'] / 1024:.2f}", f"{r['flops']['executed'] / 1e12:.3g}",
                        str(r["ops_per_step"])]
                     + [_max_batch_cell(r["max_batch_by_gpu_gb"][c], r["batch_size"]) for c in cards])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = [f"| {' | '.join(str(c).ljust(w) for c, w in zip(line, widths))} |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    ckpt = ", gradient checkpointing" if s["gradient_checkpointing"] else ""
    out.insert(0, f"ESTIMATE (fake tensors, nothing allocated), per GPU: {s['engine']} on {s['num_processes']} GPU(s), "
                  f"{s['model']} at {s['resolution']} px, "
                  f"{s['batch_size']} pair(s) per step, {s['dtype']}{ckpt}; {result['seconds']:.0f} s\n")
    out.append("")
    out.append(f"Peak = allocator bytes (512-byte blocks), model setup included; parts at the step's peak; max batch "
               f"keeps {s['card_reserve_gib']} GiB of each card free (CUDA context, workspaces); GB read as GiB. "
               "ops/step: operators one step dispatches that compute a tensor (no views, allocations or metadata "
               "queries), about the GPU kernels it launches. "
               f"* more than {EXTRAPOLATION_LIMIT}x the estimated batch: memory per pair grows with the batch (SDXL: "
               "0.66 GiB from 1 to 2 pairs, 1.35 at 32), so a far extrapolation overstates it; estimate again with "
               "--batch-size near it.")
    return "\n".join(out)

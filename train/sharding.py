"""Which distributed engine a training run uses, and what FSDP2 sharding changes for it.

Engines (recorded as ``"distributed": {"engine": ..., "num_processes": N}`` in training_config.json):

- "single": one process; "ddp": accelerate's DistributedDataParallel (every process holds the whole model);
- "fsdp2": torch's ``fully_shard`` through accelerate's FSDP2 plugin (``accelerate launch --use_fsdp
  --fsdp_version 2``): weights, gradients and optimizer state split over the processes; each block's weights are
  all-gathered for its forward and backward only.

DeepSpeed and FSDP1 are refused in one line (:func:`check_engine_request`), as are options whose code works on
whole weight tensors (see ``_SHARDED_REFUSALS``): nothing runs another engine than the one asked for.

accelerate enables FSDP only on accelerators (``accelerate/state.py``: the CPU stays ``MULTI_CPU``), but torch's
``fully_shard`` runs on the CPU over gloo. :func:`enable_fsdp2` therefore turns an accelerate state that was asked
for FSDP2 on the CPU into the FSDP2 state accelerate builds on GPUs (the same plugin, read from the same
environment), so ``prepare``, ``clip_grad_norm_``, ``save_state`` / ``load_state`` (sharded, torch.distributed
.checkpoint) and ``get_state_dict`` take the very code paths they take on GPUs, and CI tests them with 2 CPU processes.
"""
from __future__ import annotations

import contextlib
import hashlib
import os

from pipeline.errors import UserError
from pipeline.runtime.distributed import launched_processes, requested_engine

from .run_folder import recorded_config

DOCS = "docs/many-gpus.md"
FSDP2_LAUNCH = "accelerate launch --use_fsdp --fsdp_version 2 ..."

# Options whose code works on whole weight tensors or a whole model, refused under a sharded engine.
_SHARDED_REFUSALS = (
    (lambda cfg: cfg.is_lora,
     "LoRA under FSDP2 is not supported (an adapter is a few MB: plain data parallel fits it); launch a LoRA run "
     "without --use_fsdp"),
    (lambda cfg: cfg.optimizer_in_backward,
     "--optimizer-in-backward steps whole weights inside the backward pass, before FSDP2's reduce-scatter has "
     "averaged their gradients; drop it under FSDP2 (sharding already splits gradients and optimizer state over the "
     "processes)"),
    (lambda cfg: cfg.master_weights == "bf16",
     "--master-weights bf16 (BF16AdamW) updates flat chunks of whole weights, which FSDP2 shards; under FSDP2 keep "
     "fp32 master weights (sharded) and add --mixed-precision bf16"),
    (lambda cfg: cfg.use_8bit_adam,
     "--use-8bit-adam (bitsandbytes) is not tested on FSDP2's sharded weights; drop it under FSDP2"),
    (lambda cfg: cfg.compile, "--compile is not supported under FSDP2 yet; drop it"),
    (lambda cfg: cfg.spec.reads == "prompts",
     "--objective spo samples images with the policy on each process, which is not supported under FSDP2; launch "
     "it without --use_fsdp"),
)


def check_engine_request(cfg) -> str | None:
    """The engine the launch asked for ("fsdp2" or None for DDP / one process), refused in one line when this run
    cannot honour it. Called before the output folder is touched.

    Raises:
        UserError: DeepSpeed (not supported: its engine owns accumulation, clipping and stepping, which mapo-train
            does itself; FSDP2 shards the same state), FSDP version 1, an option FSDP2 cannot shard, or FSDP2 on
            one process (nothing to shard over).
    """
    engine = requested_engine()
    if engine is None:
        return None
    if engine == "deepspeed":
        raise UserError(f"mapo-train does not support DeepSpeed (its engine owns gradient accumulation and the "
                        f"optimizer step, which mapo-train does itself); shard a full fine-tune with FSDP2 instead: "
                        f"{FSDP2_LAUNCH} (see {DOCS}).")
    if engine != "fsdp2":
        raise UserError(f"FSDP version {engine[4:]} is not supported; launch with --use_fsdp --fsdp_version 2 "
                        f"(FSDP2; see {DOCS}).")
    if os.environ.get("FSDP_ACTIVATION_CHECKPOINTING", "false").lower() == "true":
        raise UserError("--fsdp_activation_checkpointing is not tested with mapo-train (accelerate wraps the UNet's "
                        "blocks); use mapo-train's --gradient-checkpointing (diffusers' own, tested under FSDP2).")
    for applies, message in _SHARDED_REFUSALS:
        if applies(cfg):
            raise UserError(f"{message}.")
    if launched_processes() < 2:
        raise UserError("FSDP2 shards over several processes but this launch has one; launch with --num_processes 2 "
                        "or more, or without --use_fsdp.")
    return engine


def enable_fsdp2(accelerator) -> None:
    """Make ``accelerator`` shard with FSDP2 as the launch asked; call it before ``prepare``.

    On GPUs accelerate has already set FSDP2 up from the launcher's environment. On the CPU it left the state at
    ``MULTI_CPU``: the state is switched to FSDP with the plugin accelerate would have built (same environment,
    mixed precision set the same way). Without an explicit ``--fsdp_auto_wrap_policy`` each of the model's
    ``_no_split_modules`` (diffusers' UNet: its ResNet and transformer blocks) becomes its own FSDP unit, so only
    one block's weights are gathered at a time (accelerate's default, NO_WRAP, gathers the whole model at once).

    Raises:
        UserError: accelerate runs neither FSDP2 nor on the CPU (an engine the run cannot honour).
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if accelerator.distributed_type == DistributedType.MULTI_CPU:
        plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* environment, as accelerate builds it
        if accelerator.mixed_precision != "no":
            plugin.set_mixed_precision(accelerator.mixed_precision)
        state.fsdp_plugin = plugin
        state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    if not accelerator.is_fsdp2:
        raise UserError(f"FSDP2 was asked for but accelerate runs {accelerator.distributed_type.value}; check the "
                        f"accelerate config (see {DOCS}).")
    state.fsdp_plugin.mixed_precision_policy = policy_as_ddp(state.fsdp_plugin.mixed_precision_policy)
    if "FSDP_AUTO_WRAP_POLICY" not in os.environ:
        from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

        state.fsdp_plugin.auto_wrap_policy = transformer_auto_wrap_policy


def policy_as_ddp(policy):
    """FSDP2's mixed-precision policy made to compute what DDP under autocast computes; ``policy``: the plugin's
    ``MixedPrecisionPolicy`` (or None: returned as it is, full precision).

    - Gradients averaged over the processes in fp32, as DDP averages autocast's fp32 gradients: accelerate's
      ``set_mixed_precision`` reduces them in the compute dtype (bf16: 8 bits of mantissa for a sum over N
      processes); torchtitan's default is ``reduce_dtype=float32`` as here. Weights are still gathered in bf16.
    - Forward inputs NOT cast (``cast_forward_inputs=False``): FSDP2's default casts every floating input of a
      sharded module to ``param_dtype``, so a flow model's timestep (1000 sigma) reached the transformer rounded to
      bf16 (411.47 -> 412.0; spacing 4 above 512) and SDXL's float time ids likewise (1365 -> 1368), while DDP passes
      them exact. The trainer runs every forward under ``accelerator.autocast()``, which casts what matmuls need.
    """
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if not isinstance(policy, MixedPrecisionPolicy):
        return policy
    return MixedPrecisionPolicy(param_dtype=policy.param_dtype, reduce_dtype=torch.float32,
                                output_dtype=policy.output_dtype, cast_forward_inputs=False)


def engine_record(accelerator) -> dict:
    """``{"engine": "single" | "ddp" | "fsdp2", "num_processes": N}``: what this run really used."""
    if accelerator.is_fsdp2:
        engine = "fsdp2"
    else:
        engine = "ddp" if accelerator.num_processes > 1 else "single"
    return {"engine": engine, "num_processes": accelerator.num_processes}


def check_resume_engine(out, accelerator) -> None:
    """Refuse to resume a run whose checkpoints another engine wrote: FSDP2's are sharded
    (torch.distributed.checkpoint folders), DDP's and one process's whole (``model.safetensors``), and neither loads
    the other's. Reads the run's recorded training_config.json (one without ``distributed`` was written before
    engines were recorded, so by DDP or one process); called before any model loads.

    Raises:
        UserError: the engines differ.
    """
    saved = recorded_config(out)
    before = (saved.get("distributed") or {}).get("engine", "ddp")
    if saved and (before == "fsdp2") != accelerator.is_fsdp2:
        now = engine_record(accelerator)["engine"]
        raise UserError(f"Cannot resume '{out}': its checkpoints were written by {before} and this launch runs "
                        f"{now}; launch it as it was launched (see {DOCS}), or use a new --output-dir.")


def setup_device(accelerator, cfg):
    """Where the models are built before ``prepare``: under FSDP2 the CPU (``fully_shard`` and accelerate's
    ``cpu_ram_efficient_loading`` move each unit's shard to the GPU, so no GPU ever holds a whole UNet: SDXL's
    policy and DPO reference in fp32 would be 20.6 GB on every GPU first); else the accelerator's device. An
    offloaded reference (``--reference-device cpu``) needs the GPU as its execution device: then too."""
    if accelerator.is_fsdp2 and cfg.reference_device != "cpu":
        return "cpu"
    return accelerator.device


def shard_frozen(accelerator, module):
    """Shard a frozen module (DPO's / KTO's reference UNet) like the policy: one FSDP unit per block the plugin's
    wrap policy picks, then the root, with the plugin's mixed precision and offload policies, so each process holds
    1/N of it (SDXL's fp32 reference: 10.3 GB on each GPU under DDP, 1.3 GB at 8 processes). Returns ``module``."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy, get_module_children_bottom_up
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    plugin = accelerator.state.fsdp_plugin
    kwargs = {"mp_policy": plugin.mixed_precision_policy or MixedPrecisionPolicy(),
              "offload_policy": plugin.cpu_offload, "reshard_after_forward": True}
    policy = fsdp2_prepare_auto_wrap_policy(plugin, module)
    if policy is not None:
        for sub in get_module_children_bottom_up(module)[:-1]:
            if policy(sub):
                fully_shard(sub, **kwargs)
    fully_shard(module, **kwargs)
    return module


def accumulation_context(accelerator, model, last: bool):
    """The context of one micro-batch's backward. DDP: no gradient sync but on the ``last`` micro-batch (one
    all-reduce per step). FSDP2: each micro-batch's gradients are reduce-scattered at once into the sharded
    accumulated gradients: accelerate's ``no_sync`` would keep every weight's whole, unsharded gradient on every GPU
    until the last micro-batch (SDXL: 10.3 GB in fp32), the memory FSDP2 exists to split; the price is one
    reduce-scatter per micro-batch instead of per step."""
    if last or accelerator.is_fsdp2:
        return contextlib.nullcontext()
    return accelerator.no_sync(model)


def _plain_class(model):
    """The model's own class: ``fully_shard`` swaps a module's class for an ``FSDP<Class>`` subclass."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))


@contextlib.contextmanager
def gathered_model(accelerator, model):
    """The trained model whole, on the main process: a plain (unsharded) copy under FSDP2, built from the model's
    config on the meta device and filled with the full state dict gathered to the CPU (``get_state_dict``:
    torch.distributed.checkpoint's full state dict); the unwrapped model itself under DDP or one process. Other
    processes get None. EVERY process must enter (the gather is a collective). The copy is what ``save_pretrained``
    writes and what validation runs (a sharded forward on one process would wait forever for the others)."""
    if not accelerator.is_fsdp2:
        yield accelerator.unwrap_model(model) if accelerator.is_main_process else None
        return
    import torch

    state_dict = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        yield None
        return
    unwrapped = accelerator.unwrap_model(model)
    with torch.device("meta"):
        plain = _plain_class(unwrapped).from_config(unwrapped.config)
    plain.load_state_dict(state_dict, assign=True, strict=True)
    left = [n for n, t in [*plain.named_parameters(), *plain.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"gathered model: {len(left)} tensors not in the state dict (first: {left[0]})")
    plain.requires_grad_(False).train(unwrapped.training)
    try:
        yield plain
    finally:
        del plain, state_dict


def weights_digest(params) -> str:
    """SHA-256 of the weights' full values in order (a DTensor shard is gathered first: a collective, so every
    process calls it). Equal on every process of a run whose weights are in sync."""
    from torch.distributed.tensor import DTensor

    h = hashlib.sha256()
    for p in params:
        t = p.detach()
        if isinstance(t, DTensor):
            t = t.full_tensor()
        h.update(t.float().cpu().numpy().tobytes())
    return h.hexdigest()

"""FLOPs of one training step (torch.utils.flop_counter) and model FLOPs utilisation."""
from __future__ import annotations

# Dense bf16 tensor-core peaks in TFLOP/s (no sparsity), matched against torch.cuda.get_device_name().
# First match wins, so the more specific names come first.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("RTX 4090", 165.0),
)

# What an 8192^3 bf16 matmul reaches through PyTorch on H100 SXM / H200 machines (769-798 TFLOP/s measured
# on the lent H200s): MFU against it says how far a step is from the attainable rate, MFU against the
# datasheet peak (PEAK_BF16_TFLOPS) how far from the nominal one. Other GPUs: not measured (None).
MEASURED_PEAK_TFLOPS = (("H100 PCIe", None), ("H100 NVL", None), ("GH200", None), ("H100", 790.0), ("H200", 790.0))


def _lookup(table, device_name: str) -> float | None:
    """The value of the first ``(name, value)`` of ``table`` whose name is in ``device_name`` (case-insensitive)."""
    for key, value in table:
        if key.lower() in device_name.lower():
            return value
    return None


def measured_peak_tflops(device_name: str) -> float | None:
    return _lookup(MEASURED_PEAK_TFLOPS, device_name)


def _register_cpu_flash_attention() -> None:
    """Give FlopCounterMode a formula for the CPU flash-attention ops.

    On the CPU, SDPA dispatches to ``aten._scaled_dot_product_flash_attention_for_cpu`` (and its
    backward), which torch.utils.flop_counter has no formula for, so attention FLOPs were missed.
    Their arguments start like the CUDA flash op's (query, key, value ``[B, H, S, D]``), so the same
    formulas apply: torch.utils.flop_counter's ``sdpa_flop_count`` (2 matmuls of ``2*B*H*S_q*S_k*D``)
    and ``sdpa_backward_flop_count`` (5 such matmuls, twice the forward's FLOPs and a half).
    Idempotent; a no-op on a torch without the op.
    """
    import torch
    from torch.utils import flop_counter as fc

    ops = torch.ops.aten
    fwd = getattr(ops, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(ops, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None and fwd.default not in fc.flop_registry:
        @fc.register_flop_formula(fwd, get_raw=True)
        def _cpu_flash_forward(query, key, value, *args, out_val=None, **kwargs) -> int:
            return fc.sdpa_flop_count(query.shape, key.shape, value.shape)
    if bwd is not None and bwd.default not in fc.flop_registry:
        @fc.register_flop_formula(bwd, get_raw=True)
        def _cpu_flash_backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
            return fc.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


_register_cpu_flash_attention()


def peak_tflops(device_name: str) -> float | None:
    return _lookup(PEAK_BF16_TFLOPS, device_name)


def count_step_flops(bench_step, step_index: int) -> dict:
    """Run one optimizer step under FlopCounterMode; FLOPs of the forward and of the backward.

    ``executed`` FLOPs are what the hardware did (with gradient checkpointing, the backward includes
    the recomputed forward of every checkpointed block). ``model`` FLOPs are those of the same step
    without recomputation, as MFU is conventionally defined (PaLM, Chowdhery et al. 2022, appendix B):
    see :func:`model_flops`. Valid for configurations whose whole forward is differentiable (mapo,
    sft), which is where MFU is reported.
    """
    from torch.utils.flop_counter import FlopCounterMode

    batch = bench_step.next_batch()  # encoders (in-step) are counted in neither: only the training step
    with FlopCounterMode(display=False) as fwd_counter:
        out = bench_step.forward(batch, step_index)
    with FlopCounterMode(display=False) as bwd_counter:
        bench_step.update(out.loss)
    del out
    fwd, bwd = fwd_counter.get_total_flops(), bwd_counter.get_total_flops()
    return {"forward": int(fwd), "backward": int(bwd), "executed": int(fwd + bwd),
            **model_flops(bench_step, batch, step_index, fwd + bwd)}


def model_flops(bench_step, batch: dict, step_index: int, executed: int) -> dict:
    """``{"model": FLOPs, "model_flops_method": how}`` of one step of ``batch`` without gradient checkpointing.

    Without checkpointing, the model FLOPs are the executed ones. With it, diffusers recomputes only the
    checkpointed blocks (ResNet and transformer blocks: about 77% of SDXL's forward; not conv_in/out, the
    time embedding, down/upsamplers), so "executed minus one forward" under-reads the model FLOPs. Here
    checkpointing is switched off for one forward + backward of the batch's first pair (no optimizer
    update; gradients are dropped), whose FLOPs times the batch size are the step's (every FLOP of a
    UNet step is per example). If even that runs out of GPU memory, the old bound is returned
    (``"executed minus one forward"``).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .step import is_out_of_memory

    if not bench_step.spec.gradient_checkpointing:
        return {"model": int(executed), "model_flops_method": "executed (no checkpointing)"}
    n = int(batch["latents"].shape[0])
    one = {k: v[:1] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n else v for k, v in batch.items()}
    unet = bench_step.unet
    unet.disable_gradient_checkpointing()
    try:
        with FlopCounterMode(display=False) as counter:
            bench_step.forward(one, step_index).loss.backward()
        flops, method = n * counter.get_total_flops(), "one pair without checkpointing, x batch size"
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        flops, method = None, "executed minus one forward (the pair without checkpointing did not fit)"
    finally:
        unet.enable_gradient_checkpointing()
        bench_step.optimizer.zero_grad(set_to_none=True)
    if flops is None:
        # Out of the except block: the OOM's frames are gone. Subtracting a whole forward over-counts the recompute.
        with FlopCounterMode(display=False) as counter:
            bench_step.forward(one, step_index)
        flops = executed - n * counter.get_total_flops()
    return {"model": int(flops), "model_flops_method": method}


def mfu(model_flops: int, step_seconds: float, peak: float | None) -> float | None:
    if peak is None or step_seconds <= 0:
        return None
    return model_flops / step_seconds / (peak * 1e12)

"""Memory-saving optimizers for full fine-tunes of big UNets (SDXL: 2.6B weights).

- :class:`BF16AdamW`: AdamW whose weights AND moments are bf16 (6 bytes per weight instead of fp32
  AdamW's 16 with its fp32 master weights), each update computed in fp32 and written back with
  stochastic rounding, so updates far smaller than a bf16 step (1e-5 learning rates) are not lost.
- :class:`OptimizerInBackward`: an optimizer stepped during the backward pass (from each weight's
  ``register_post_accumulate_grad_hook``) on buckets of finished gradients, each freed right after its
  update, so the full set of gradients is never in memory at once (torchtune's optimizer-in-backward,
  ``torchtune.training.OptimizerInBackwardWrapper``, with DDP-style buckets).

Why stochastic rounding rather than Kahan summation: both make bf16 weights train like fp32 ones
(Zamirai et al. 2020, "Revisiting BFloat16 Training", sections 3-4). Kahan needs a bf16
compensation buffer per weight (+2 bytes) and only fixes the weights; the moments then still lose
their small updates (``0.999 * v`` rounds back to ``v`` in bf16, whose step is 2**-8). Stochastic
rounding costs no memory, is unbiased (E[round(x)] = x) and applies to the moments as well, which is
what brings SDXL's full fine-tune to 6 bytes per weight. The rounding follows torchao's
``_fp32_to_bf16_sr`` (``torchao/optim/quant_utils.py``, used by its ``_AdamW(bf16_stochastic_round=True)``):
add 16 random low bits to the fp32 bit pattern, then truncate.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from pipeline.errors import UserError


class OptimizerStateError(UserError, ValueError):
    """A saved optimizer state that this optimizer cannot load (one line for the CLI)."""


def stochastic_round_bf16(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``x`` (fp32) rounded to bf16 up or down at random, with P(up) = the distance to the lower value / bf16 step.

    Unbiased: ``E[stochastic_round_bf16(x)] == x`` for finite ``x``; inf and NaN stay what they are.
    Returns a new bf16 tensor shaped like ``x``. ``generator`` (on ``x``'s device) makes it reproducible.
    Raises TypeError for a non-fp32 ``x``. Source: torchao ``_fp32_to_bf16_sr``; Zamirai et al. 2020.
    """
    if x.dtype != torch.float32:
        raise TypeError(f"stochastic_round_bf16 takes fp32, got {x.dtype}")
    bits = x.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
    # Adding below bit 16 then clearing those bits rounds the magnitude up with probability = the
    # dropped fraction (sign-magnitude format: the same for negative numbers). -65536 = 0xFFFF0000.
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)


def _scale_each(tensors: list[Tensor], factors: Tensor) -> None:
    """``tensors[i] *= factors[i]`` in place (``factors``: fp32 ``[len(tensors)]``) with a number of kernels that does
    not grow with the number of tensors: one flat multiply (``torch._foreach_mul_`` with one 0-d factor per tensor
    falls back to a multiply per tensor). Temporary memory: two copies of the tensors' values."""
    flat = _flatten_dense_tensors(tensors)
    scale = torch.cat([f.expand(t.numel()) for f, t in zip(factors.to(flat.dtype).unbind(), tensors)])
    _write_flat(tensors, flat.mul_(scale))


def _write_flat(tensors: list[Tensor], flat: Tensor) -> None:
    """Copy 1-D ``flat`` (the values of ``tensors`` in order, as ``_flatten_dense_tensors`` lays them out) back
    into ``tensors``, cast to each one's dtype: one ``torch._foreach_copy_``."""
    torch._foreach_copy_(tensors, _unflatten_dense_tensors(flat, tensors))


def _flat_fp32(tensors: list[Tensor]) -> Tensor:
    """The values of ``tensors`` (any float dtype, any strides) in one 1-D fp32 tensor, in logical order
    (torch's ``_flatten_dense_tensors``, as DDP and apex flatten buckets; a lone fp32 tensor comes back as a view).
    Concatenated in their own dtype, then cast: CUDA's ``cat`` copies inputs in batched kernels only when the
    output has their dtype (an fp32 ``out=`` for bf16 inputs falls back to one copy per tensor)."""
    return _flatten_dense_tensors(tensors).float()


def default_chunk_numel(device: torch.device) -> int:
    """Values per flat chunk of :class:`BF16AdamW` on ``device``. CUDA: 2**24 (a few hundred chunks for SDXL's
    2.6B weights: the update is bound by kernel launches, ~30 per chunk). Elsewhere (the CPU): 2**16, so a chunk's
    fp32 temporaries stay in cache; measured on 2 shared cores (python -m bench optimizer), the first 149M of SDXL's
    weights: 2**24 chunks took 1.2-1.5x the per-weight update's time, 2**16 0.9-1.15x (tiny-sdxl: 0.5-0.8x)."""
    return 2**24 if torch.device(device).type == "cuda" else 2**16


class BF16AdamW(torch.optim.Optimizer):
    """AdamW for bf16 weights: the update in fp32, written back to bf16 weights and moments with stochastic rounding.

    Same update as ``torch.optim.AdamW`` (decoupled weight decay, Loshchilov & Hutter 2019;
    bias-corrected moments): ``w <- w * (1 - lr * wd) - lr / bc1 * m / (sqrt(v / bc2) + eps)``.
    Weights must be bf16 (TypeError otherwise). Moments are kept in ``state_dtype``: bf16 (default,
    4 bytes per weight, stochastically rounded like the weights) or fp32 (8 bytes, exact). State per
    weight: "step" (int), "exp_avg", "exp_avg_sq" (shaped like the weight). The random bits come from
    one generator per device seeded with ``seed``; their state is saved in :meth:`state_dict`, so a
    resumed run rounds exactly as an uninterrupted one.

    The update runs on flat chunks: consecutive weights (same device, same step count) are concatenated
    until a chunk holds ``chunk_numel`` values (a larger single weight is its own chunk), updated with ~30
    operators per chunk and copied back with one ``torch._foreach_copy_`` per buffer. Per weight instead,
    SDXL's ~1,700 weight tensors cost ~25 small operators each (42,000 kernel launches a step: the bench's
    ``ops/step``); the multi-tensor idea is PyTorch's ``foreach`` AdamW and apex's ``multi_tensor_apply``.
    ``chunk_numel`` None: :func:`default_chunk_numel` of the weights' device (CUDA: 2**24, where launches
    dominate; the CPU: 2**16, cache-sized, where 2**24 was 1.5x slower than per weight). Temporary memory:
    about 24 bytes per value of the largest chunk (fp32 copies of the gradient, the moments and the weight;
    int32 random bits): 0.4 GiB at 2**24.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 state_dtype: torch.dtype = torch.bfloat16, seed: int = 0, chunk_numel: int | None = None):
        if state_dtype not in (torch.bfloat16, torch.float32):
            raise ValueError(f"state_dtype must be bf16 or fp32, got {state_dtype}")
        if chunk_numel is not None and chunk_numel < 1:
            raise ValueError(f"chunk_numel must be >= 1, got {chunk_numel}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.state_dtype = state_dtype
        self.seed = seed
        self.chunk_numel = chunk_numel
        self._generators: dict[str, torch.Generator] = {}
        self._saved_generators: dict[str, Tensor] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            if key in self._saved_generators:
                gen.set_state(self._saved_generators.pop(key).cpu())
            self._generators[key] = gen
        return gen

    def _chunks(self, params: list[Tensor]) -> list[list[Tensor]]:
        """``params`` in runs of consecutive weights on one device at one step, each up to chunk_numel values."""
        chunks: list[list[Tensor]] = []
        key, size = None, 0
        for p in params:
            p_key = (p.device, self.state[p]["step"])
            limit = self.chunk_numel or default_chunk_numel(p.device)
            if p_key != key or size + p.numel() > limit:
                chunks.append([])
                key, size = p_key, 0
            chunks[-1].append(p)
            size += p.numel()
        return chunks

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if p.dtype != torch.bfloat16:
                    raise TypeError(f"BF16AdamW trains bf16 weights, got {p.dtype}")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=self.state_dtype)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=self.state_dtype)
                state["step"] += 1
            for chunk in self._chunks(params):
                self._update(chunk, group)
        return loss

    def _update(self, params: list[Tensor], group: dict) -> None:
        """One AdamW step of ``params`` (one device, one step count) on flat fp32 copies, written back rounded."""
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        step = self.state[params[0]]["step"]
        gen = self._generator(params[0].device)
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        g = _flat_fp32([p.grad for p in params])
        m = _flat_fp32(exp_avgs).lerp_(g, 1 - beta1)
        v = _flat_fp32(exp_avg_sqs).mul_(beta2).addcmul_(g, g, value=1 - beta2)
        del g
        bc1, bc2 = 1 - beta1 ** step, 1 - beta2 ** step
        denom = (v.sqrt() / bc2 ** 0.5).add_(eps)
        w = _flat_fp32(params).mul_(1 - lr * wd).addcdiv_(m, denom, value=-lr / bc1)
        del denom
        for buffers, value in ((params, w), (exp_avgs, m), (exp_avg_sqs, v)):
            _write_flat(buffers, stochastic_round_bf16(value, gen) if buffers[0].dtype == torch.bfloat16 else value)

    def state_dict(self) -> dict:
        out = super().state_dict()
        # Streams restored but not used yet (a resume followed by skipped steps) are kept as loaded.
        in_use = {k: g.get_state() for k, g in self._generators.items()}
        out["rounding_generators"] = {**self._saved_generators, **in_use}
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        self._saved_generators = dict(state_dict.pop("rounding_generators", {}))
        self._generators = {}
        super().load_state_dict(state_dict)
        for state in self.state.values():  # torch casts loaded floating state to the weight's dtype
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state and state[key].dtype != self.state_dtype:
                    state[key] = state[key].to(self.state_dtype)


IN_BACKWARD_BUCKET_NUMEL = 2**24
"""Values per bucket of :class:`OptimizerInBackward` (32 MiB of bf16 gradients; DDP's buckets are 25 MB): SDXL's
2.6B weights in ~160 buckets instead of ~1,700 single tensors."""


class OptimizerInBackward(torch.optim.Optimizer):
    """An optimizer stepped during the backward pass on buckets of finished gradients, each freed after its update.

    ``make_optimizer(params)`` builds the inner optimizer over all weights (AdamW, :class:`BF16AdamW`, 8-bit
    AdamW): one that skips weights whose ``.grad`` is None, as torch's and bitsandbytes' optimizers do. A
    ``register_post_accumulate_grad_hook`` on each weight adds it to the pending bucket once its gradient is
    complete; when the bucket holds ``bucket_numel`` values (and once more at the end of the backward, from
    autograd's ``queue_callback``, as DDP's reducer finishes its buckets) the bucket's gradients are optionally
    clipped to ``max_grad_norm`` (PER TENSOR, ``torch.nn.utils.clip_grad_norm_``'s formula on each tensor: the
    global norm is unknown until the backward ends, when the gradients are already gone), the inner optimizer
    steps at this optimizer's learning rate (only the bucket's weights have gradients then) and the gradients are
    freed (``p.grad = None``). Peak memory holds one bucket of gradients instead of all of them (torchtune's
    optimizer-in-backward, ``torchtune.training.memory.OptimizerInBackwardWrapper``, steps one weight at a time;
    buckets keep the number of kernels per step from growing with the number of weight tensors: a fused AdamW or
    :class:`BF16AdamW` updates a bucket with a few operators). ``bucket_numel`` 0 steps each weight alone; None:
    :data:`IN_BACKWARD_BUCKET_NUMEL`.

    This object is what the trainer, accelerate and the LR scheduler see: one param group over all
    weights whose "lr" the scheduler sets; :meth:`step` does nothing (the work happened in the backward);
    :meth:`state_dict` holds the inner optimizer's state, so accelerate's checkpoints resume exactly. Not
    possible with it: gradient accumulation (each backward updates the weights), the fp16 gradient scaler, DDP
    (its all-reduce runs after the hook), reentrant checkpointing of a weight used both inside and outside the
    checkpointed part (the inner backward's end steps it with its partial gradient; diffusers checkpoints
    non-reentrantly). A backward that is never run (the trainer's non-finite-loss skip checks the loss first)
    updates nothing.
    """

    def __init__(self, params, make_optimizer: Callable[[list], torch.optim.Optimizer], lr: float,
                 max_grad_norm: float | None = None, bucket_numel: int | None = None):
        params = list(params)
        if not params:
            raise ValueError("OptimizerInBackward needs at least one parameter")
        self.inner = make_optimizer(params)
        if len(self.inner.param_groups) != 1:
            raise ValueError(f"make_optimizer must build one param group, got {len(self.inner.param_groups)}")
        super().__init__(params, dict(lr=lr))
        self.max_grad_norm = max_grad_norm
        self.bucket_numel = IN_BACKWARD_BUCKET_NUMEL if bucket_numel is None else bucket_numel
        self._pending: dict[int, Tensor] = {}  # id -> weight, in the order their gradients finished
        self._pending_numel = 0
        self._flush_queued = False
        self._sq_norm: Tensor | None = None
        self.grad_observers: list[Callable[[Tensor], None]] = []  # called with each weight once its gradient is ready
        for p in params:  # the hooks live as long as the weights (nothing removes them)
            p.register_post_accumulate_grad_hook(self._gradient_ready)

    def _gradient_ready(self, p: Tensor) -> None:
        for observe in self.grad_observers:  # e.g. bench --estimate tagging the gradient's bytes
            observe(p)
        if id(p) in self._pending:  # accumulated again before its bucket was stepped: one entry, the summed gradient
            return
        self._pending[id(p)] = p
        self._pending_numel += p.numel()
        if not self._flush_queued:  # the last, partial bucket is stepped when this backward ends
            torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)
            self._flush_queued = True
        if self._pending_numel >= self.bucket_numel:
            self._flush()

    def _end_of_backward(self) -> None:
        self._flush_queued = False
        self._flush()

    @torch.no_grad()
    def _flush(self) -> None:
        bucket, self._pending, self._pending_numel = list(self._pending.values()), {}, 0
        if not bucket:
            return
        grads = [p.grad for p in bucket]
        norms = torch.stack(torch._foreach_norm(grads, dtype=torch.float32))
        sq_norm = norms.square().sum()
        self._sq_norm = sq_norm if self._sq_norm is None else self._sq_norm + sq_norm
        if self.max_grad_norm is not None:
            _scale_each(grads, (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0))
        # Step the bucket alone: the inner optimizer would otherwise scan all weights' .grad on every flush
        # (SDXL: ~1,700 weights x ~160 buckets per step). Its state is keyed by the weight, not by position
        # (per-position settings, such as bitsandbytes' GlobalOptimManager overrides, are not supported).
        group = self.inner.param_groups[0]
        everything, group["params"], group["lr"] = group["params"], bucket, self.param_groups[0]["lr"]
        try:
            self.inner.step()
        finally:
            group["params"] = everything
        for p in bucket:
            p.grad = None

    def step(self, closure=None):
        """Nothing: every weight was updated during the backward pass."""
        return closure() if closure is not None else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Frees every gradient; forgets a bucket and a norm left by a backward that raised (an out-of-memory try)."""
        super().zero_grad(set_to_none)
        self._pending, self._pending_numel, self._flush_queued, self._sq_norm = {}, 0, False, None

    def take_grad_norm(self) -> Tensor | None:
        """The global L2 norm of the last backward's gradients before clipping (fp32 scalar), then reset; None
        when no gradient was seen."""
        norm = None if self._sq_norm is None else self._sq_norm.sqrt()
        self._sq_norm = None
        return norm

    def state_dict(self) -> dict:
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        return {"param_groups": groups, "inner": self.inner.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Raises :class:`OptimizerStateError` when the saved state is not an optimizer-in-backward's, or one saved
        per weight (before 2026-12-01)."""
        if "inner" not in state_dict:
            if "per_parameter" in state_dict:
                raise OptimizerStateError(
                    "this checkpoint's optimizer-in-backward state was saved per weight by an older mapo-train (before "
                    "2026-12-01); resume it with that version, or start over with --overwrite")
            raise OptimizerStateError("this optimizer state is not an optimizer-in-backward state; it is another "
                                      "optimizer's")
        self.inner.load_state_dict(state_dict["inner"])
        for group, s in zip(self.param_groups, state_dict["param_groups"]):
            group.update({k: v for k, v in s.items() if k != "params"})

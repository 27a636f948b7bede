"""Memory-saving optimizers for full fine-tunes of big UNets (SDXL: 2.6B weights).

- :class:`BF16AdamW`: AdamW whose weights AND moments are bf16 (6 bytes per weight instead of fp32
  AdamW's 16 with its fp32 master weights), each update computed in fp32 and written back with
  stochastic rounding, so updates far smaller than a bf16 step (1e-5 learning rates) are not lost.
- :class:`OptimizerInBackward`: one optimizer per weight, stepped from the weight's
  ``register_post_accumulate_grad_hook`` during the backward pass; each gradient is freed right
  after its update, so the full set of gradients is never in memory at once (torchtune's
  optimizer-in-backward, ``torchtune.training.OptimizerInBackwardWrapper``).

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


class BF16AdamW(torch.optim.Optimizer):
    """AdamW for bf16 weights: the update in fp32, written back to bf16 weights and moments with stochastic rounding.

    Same update as ``torch.optim.AdamW`` (decoupled weight decay, Loshchilov & Hutter 2019;
    bias-corrected moments): ``w <- w * (1 - lr * wd) - lr / bc1 * m / (sqrt(v / bc2) + eps)``.
    Weights must be bf16 (TypeError otherwise). Moments are kept in ``state_dtype``: bf16 (default,
    4 bytes per weight, stochastically rounded like the weights) or fp32 (8 bytes, exact). State per
    weight: "step" (int), "exp_avg", "exp_avg_sq" (shaped like the weight). The random bits come from
    one generator per device seeded with ``seed``; their state is saved in :meth:`state_dict`, so a
    resumed run rounds exactly as an uninterrupted one. Temporary memory: about six fp32 copies of the
    largest weight tensor (the weights are updated one tensor at a time).
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 state_dtype: torch.dtype = torch.bfloat16, seed: int = 0):
        if state_dtype not in (torch.bfloat16, torch.float32):
            raise ValueError(f"state_dtype must be bf16 or fp32, got {state_dtype}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.state_dtype = state_dtype
        self.seed = seed
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

    def _store(self, buf: Tensor, value: Tensor, gen: torch.Generator) -> None:
        buf.copy_(stochastic_round_bf16(value, gen) if buf.dtype == torch.bfloat16 else value)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.dtype != torch.bfloat16:
                    raise TypeError(f"BF16AdamW trains bf16 weights, got {p.dtype}")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=self.state_dtype)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=self.state_dtype)
                state["step"] += 1
                step = state["step"]
                gen = self._generator(p.device)
                g = p.grad.float()
                m = state["exp_avg"].float().lerp_(g, 1 - beta1)
                v = state["exp_avg_sq"].float().mul_(beta2).addcmul_(g, g, value=1 - beta2)
                del g
                bc1, bc2 = 1 - beta1 ** step, 1 - beta2 ** step
                denom = (v.sqrt() / bc2 ** 0.5).add_(eps)
                w = p.float().mul_(1 - lr * wd).addcdiv_(m, denom, value=-lr / bc1)
                del denom
                self._store(p, w, gen)
                self._store(state["exp_avg"], m, gen)
                self._store(state["exp_avg_sq"], v, gen)
        return loss

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


class OptimizerInBackward(torch.optim.Optimizer):
    """One optimizer per weight, stepped during the backward pass as soon as that weight's gradient is complete.

    ``make_optimizer([p])`` builds each weight's optimizer (AdamW, :class:`BF16AdamW`, 8-bit AdamW).
    A ``register_post_accumulate_grad_hook`` on each weight then: optionally clips that gradient to
    ``max_grad_norm`` (PER TENSOR, ``torch.nn.utils.clip_grad_norm_``'s formula on one tensor: the
    global norm is unknown until the backward ends, when the gradients are already gone), steps the
    weight's optimizer at this optimizer's learning rate, and frees the gradient (``p.grad = None``).
    Peak memory then holds at most a few gradients instead of all of them (torchtune's design:
    ``torchtune.training.memory.OptimizerInBackwardWrapper`` / ``register_optim_in_bwd_hooks``).

    This object is what the trainer, accelerate and the LR scheduler see: one param group over all
    weights whose "lr" the scheduler sets; :meth:`step` and :meth:`zero_grad` do nothing (the work
    happened in the backward); :meth:`state_dict` holds every weight's optimizer state, so accelerate's
    checkpoints resume exactly. Not possible with it: gradient accumulation (each backward updates the
    weights), the fp16 gradient scaler, DDP (its all-reduce runs after the hook). A backward that is
    never run (the trainer's non-finite-loss skip checks the loss first) updates nothing.
    """

    def __init__(self, params, make_optimizer: Callable[[list], torch.optim.Optimizer], lr: float,
                 max_grad_norm: float | None = None):
        params = list(params)
        if not params:
            raise ValueError("OptimizerInBackward needs at least one parameter")
        self.optimizers = [make_optimizer([p]) for p in params]
        super().__init__(params, dict(lr=lr))
        self.max_grad_norm = max_grad_norm
        self._index = {id(p): i for i, p in enumerate(params)}
        self._sq_norm: Tensor | None = None
        self.grad_observers: list[Callable[[Tensor], None]] = []  # called with each weight before its update
        self._handles = [p.register_post_accumulate_grad_hook(self._step_one) for p in params]

    @torch.no_grad()
    def _step_one(self, p: Tensor) -> None:
        for observe in self.grad_observers:  # e.g. bench --estimate tagging the gradient's bytes
            observe(p)
        opt = self.optimizers[self._index[id(p)]]
        opt.param_groups[0]["lr"] = self.param_groups[0]["lr"]
        norm = torch.linalg.vector_norm(p.grad, dtype=torch.float32)
        self._sq_norm = norm.square() if self._sq_norm is None else self._sq_norm + norm.square()
        if self.max_grad_norm is not None:
            p.grad.mul_((self.max_grad_norm / (norm + 1e-6)).clamp(max=1.0).to(p.grad.dtype))
        opt.step()
        p.grad = None

    def step(self, closure=None):
        """Nothing: every weight was updated during the backward pass."""
        return closure() if closure is not None else None

    def take_grad_norm(self) -> Tensor | None:
        """The global L2 norm of the last backward's gradients before clipping (fp32 scalar), then reset; None
        when no gradient was seen."""
        norm = None if self._sq_norm is None else self._sq_norm.sqrt()
        self._sq_norm = None
        return norm

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def state_dict(self) -> dict:
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        return {"param_groups": groups, "per_parameter": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Raises ValueError when the saved state is not an optimizer-in-backward's of as many weights."""
        saved = state_dict.get("per_parameter")
        if saved is None or len(saved) != len(self.optimizers):
            raise ValueError(f"this optimizer state is not an optimizer-in-backward state of {len(self.optimizers)} "
                             f"weights (got {'another optimizer' if saved is None else len(saved)})")
        for opt, s in zip(self.optimizers, saved):
            opt.load_state_dict(s)
        for group, s in zip(self.param_groups, state_dict["param_groups"]):
            group.update({k: v for k, v in s.items() if k != "params"})

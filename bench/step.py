"""One configuration's optimizer step, built from the trainer's own parts.

``train.model_setup.setup_models`` / ``build_optimizer`` make the models and AdamW exactly as
``mapo-train`` does, ``train.data.batch_stream`` feeds the batches, and ``train.step.compute_loss``
computes the loss; the step then does what ``Trainer._optimizer_step`` does with one micro-batch:
backward, gradient clipping, AdamW step, zero_grad, and a host sync on the loss (the trainer's
finite-loss check). Mixed precision is ``torch.autocast`` like accelerate's. The in-step
configuration first runs the VAE and text encoders on the batch's pixels and captions under
no_grad, like the upstream diffusers DPO/MaPO trainers.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StepSpec:
    model: str
    objective: str
    lora_rank: int  # 0 = full UNet
    in_step: bool
    device: str
    dtype: str  # fp32 | bf16
    resolution: int
    batch_size: int
    gradient_checkpointing: bool
    seed: int = 0
    options: tuple = ()  # (TrainConfig field, value) pairs: bench.config.Configuration.options


class BenchStep:
    """``step(i)`` runs optimizer step ``i`` and returns its loss (a float: the step is synchronised)."""

    def __init__(self, spec: StepSpec, items, weights: bool = True):
        import torch

        from pipeline.data.latent_shards import PairSampler
        from train.config import TrainConfig
        from train.data import TrainData, batch_stream
        from train.model_setup import (
            build_optimizer,
            setup_models,
            trainable_parameters,
        )
        from train.step import Objective

        self.spec = spec
        self.device = torch.device(spec.device)
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[spec.dtype]
        self.cfg = TrainConfig(data="-", model=spec.model, objective=spec.objective, lora_rank=spec.lora_rank,
                               batch_size=spec.batch_size, gradient_checkpointing=spec.gradient_checkpointing,
                               mixed_precision="no" if spec.dtype == "fp32" else spec.dtype, seed=spec.seed,
                               **dict(spec.options)).validate()
        self.encoders = None
        if spec.in_step:
            from .data import load_encoders

            self.encoders = load_encoders(spec.model, self.device, self.dtype)
        self.models = setup_models(self.cfg, self.dtype, self.device, weights=weights)
        self.unet = self.models.unet
        self.params = trainable_parameters(self.unet)
        self.optimizer = build_optimizer(self.cfg, self.params)
        self.objective = Objective(spec.objective, self.cfg.resolved_beta, self.models.num_train_timesteps,
                                   self.models.prediction_type, self.cfg.mapo_a)
        self.lora_base = self.unet if (spec.lora_rank and spec.objective == "dpo") else None
        sampler = PairSampler(len(items), spec.batch_size, spec.seed, drop_last=True)
        self.stream = batch_stream(TrainData(items, sampler), self.device)

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.params)

    def next_batch(self) -> dict:
        batch = next(self.stream)
        return self._encode(batch) if self.encoders is not None else batch

    def _encode(self, batch: dict) -> dict:
        """Upstream trainers' per-step work: pixels -> latents, captions -> embeddings (no_grad)."""
        from pipeline.models.conditioning import encode_text
        from train.data import to_compute

        from .data import encode_pixels

        pixels = batch["pixels"]
        latents = encode_pixels(self.encoders.vae, pixels.flatten(0, 1)).unflatten(0, pixels.shape[:2])
        emb = encode_text(self.encoders, batch["caption"])
        # encode_text returns inference-mode tensors; the graph may not save those, so clone them.
        out = {"latents": latents, "prompt_embeds": emb.prompt_embeds.clone()}
        if emb.pooled is not None:
            out["pooled_prompt_embeds"] = emb.pooled.clone()
            out["add_time_ids"] = batch["add_time_ids"]
        return to_compute(out, self.device)  # the trainer's inputs: fp32, whatever the encoders' dtype

    def forward(self, batch: dict, step: int):
        import torch

        from train.step import compute_loss, step_generator

        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            return compute_loss(self.unet, batch, self.models.noise_scheduler, self.objective,
                                step_generator(self.spec.seed, step, 0, 0),
                                reference=self.models.reference, lora_base=self.lora_base)

    def apply(self, loss) -> None:
        """Backward, gradient clipping, AdamW step and zero_grad: the update without the host sync
        (so it also runs on fake tensors, whose values cannot be read)."""
        import torch

        loss.backward()  # --optimizer-in-backward: the weights are updated here, gradient by gradient
        if not self.cfg.optimizer_in_backward:
            # foreach=True is what the default picks for real CUDA and CPU tensors (the trainer's call); fake
            # tensors (--estimate) would otherwise take the per-tensor path: 2 operators per weight, not 2 in all.
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def update(self, loss) -> float:
        """:meth:`apply`, then the loss as a float (the trainer's finite check syncs here too)."""
        self.apply(loss)
        return float(loss.detach())

    def step(self, i: int) -> float:
        return self.update(self.forward(self.next_batch(), i).loss)

    def synchronize(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a GPU running out of memory: ``torch.cuda.OutOfMemoryError``, or the plain
    RuntimeError by which cuDNN / cuBLAS report a failed allocation."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc) for s in ("out of memory", "ALLOC_FAILED"))

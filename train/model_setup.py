"""The models a training run needs: the trainable UNet (full or LoRA), the DPO / KTO / SPO reference, the
noise scheduler.

The VAE and text encoders are NOT loaded here: training reads precomputed latents and
embeddings (method.md lists running them inside every step as an upstream trap). They are
loaded only for validation images (train/validation.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: torch is imported lazily to keep CLI start-up fast
    import torch

import copy
from dataclasses import dataclass

from pipeline.errors import UserError, require
from pipeline.models.builtin import get_builtin
from pipeline.models.loading import _call_loader, compile_unet, quiet_hub_progress, resolve_model_source

from .config import TrainConfig


@dataclass
class TrainModels:
    unet: "torch.nn.Module"  # trainable: all weights (full) or only the LoRA adapter
    reference: "torch.nn.Module | None"  # frozen copy, only for full fine-tune DPO and KTO
    noise_scheduler: object  # DDPMScheduler (alphas_cumprod, add_noise) or FlowMatchEulerDiscreteScheduler
    family: str  # "sdxl" | "sd15" | "sd3" (pipeline.families)
    lora_target_modules: list[str] | None = None  # the adapted modules (LoRA runs): given, or the family's

    @property
    def num_train_timesteps(self) -> int:
        return int(self.noise_scheduler.config.num_train_timesteps)

    @property
    def prediction_type(self) -> str:
        """epsilon / v_prediction / sample (DDPM) or "flow" (the velocity of rectified flow)."""
        return str(self.noise_scheduler.config.get("prediction_type", "flow"))


def unet_family(unet) -> str:
    """The family name of a denoiser (SDXL's UNet takes pooled embeddings and time ids, SD3's is a transformer)."""
    from pipeline.families import family_of_denoiser

    return family_of_denoiser(unet).name


def load_base_unet_and_scheduler(model: str, weights: bool = True):
    """The base model's denoiser (UNet or transformer, fp32 master weights) and its training scheduler
    (DDPMScheduler, or FlowMatchEulerDiscreteScheduler for a flow family) from its scheduler config.

    ``weights=False`` builds the UNet from its config alone, randomly initialised, without reading
    the weights file: what ``python -m bench train --estimate`` needs under ``FakeTensorMode``, where
    no real tensor can be loaded and the values do not change what memory or FLOPs cost.
    """
    import torch
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    from pipeline.models.loading import model_family_of

    quiet_hub_progress()
    fam = model_family_of(model)
    # The training scheduler of the family's noise process, from the model's own scheduler config.
    scheduler_cls = FlowMatchEulerDiscreteScheduler if fam.flow else DDPMScheduler
    builtin = get_builtin(model)
    if builtin is not None and not builtin.has_folder:
        comps = builtin.components(torch.float32, "cpu", skip=("vae", "text_encoder", "text_encoder_2"))
        return comps[fam.denoiser_dir], scheduler_cls.from_config(comps["scheduler"].config)
    source = resolve_model_source(model)
    denoiser_cls = fam.denoiser_cls()
    if not weights:
        config = _call_loader("Model", model, denoiser_cls.load_config, source, subfolder=fam.denoiser_dir)
        scheduler = _call_loader(
            "Scheduler of model", model, scheduler_cls.from_pretrained, source, subfolder="scheduler"
        )
        return denoiser_cls.from_config(config), scheduler
    unet = _call_loader("Model", model, denoiser_cls.from_pretrained, source, subfolder=fam.denoiser_dir,
                        torch_dtype=torch.float32)
    scheduler = _call_loader("Scheduler of model", model, scheduler_cls.from_pretrained, source, subfolder="scheduler")
    return unet, scheduler


def lora_target_modules(cfg: TrainConfig, unet) -> list[str]:
    """``--lora-target-modules`` as given, or the denoiser's family's default
    (:attr:`pipeline.families.base.ModelFamily.lora_target_modules`)."""
    if cfg.lora_target_modules is not None:
        return list(cfg.lora_target_modules)
    from pipeline.families import family_of_denoiser

    return list(family_of_denoiser(unet).lora_target_modules)


def check_lora_targets(unet, targets: list[str]) -> None:
    """Every name in ``targets`` must match a module of ``unet`` the way peft matches a ``target_modules``
    list (the module's dotted path equals the name or ends with "." + name): peft only refuses a list of
    which nothing matches, so a misspelt name beside good ones would silently adapt fewer modules.

    Raises:
        UserError: names that match no module, with the family's default for comparison.
    """
    from pipeline.families import family_of_denoiser

    names = [name for name, _ in unet.named_modules()]
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:
        fam = family_of_denoiser(unet)
        raise UserError(f"--lora-target-modules: {', '.join(unmatched)} match{'es' if len(unmatched) == 1 else ''} "
                        f"no module of the {fam.name} {type(unet).__name__}; its family's default is "
                        f"{','.join(fam.lora_target_modules)}.")


def add_lora(unet, cfg: TrainConfig, targets: list[str]) -> None:
    """Freeze the UNet and add a peft LoRA adapter on the ``targets`` modules (the only trainable weights).

    Raises:
        UserError: a target that matches no module, or one peft cannot adapt.
    """
    from peft import LoraConfig

    check_lora_targets(unet, targets)
    unet.requires_grad_(False)
    lora = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha if cfg.lora_alpha is not None else cfg.lora_rank,
        init_lora_weights="gaussian",
        target_modules=list(targets),
    )
    import torch

    from pipeline.runtime.seeds import derive_seed

    try:
        # lora_A's random init from --seed, not from whatever the global RNG holds: two runs with
        # the same settings (e.g. an uninterrupted one and a resumed one) start from the same adapter.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, "lora-init", 0))
            unet.add_adapter(lora)
    except ValueError as exc:  # peft: e.g. "Target module ... is not supported" (not a Linear / Conv layer)
        raise UserError(f"--lora-target-modules: {str(exc).splitlines()[0]}") from None


def setup_models(cfg: TrainConfig, weight_dtype, device, weights: bool = True) -> TrainModels:
    """Load the base UNet and make it trainable as ``cfg`` says.

    - full fine-tune: all UNet weights train in fp32 (autocast handles mixed precision), or in
      bf16 with ``--master-weights bf16``; DPO, KTO and SPO get a frozen copy as their reference in the same dtype
      (``--reference-dtype auto``), run under the same autocast as the policy: a bf16 copy of fp32
      weights computes other numbers than the policy, so at step 0 reference != policy and the DPO
      loss would not start at ln 2 (``--reference-dtype bf16`` accepts that to halve its memory).
      ``--reference-device cpu`` keeps it in CPU memory (:func:`train.offload.offload_to_cpu`).
    - LoRA: base weights frozen in ``weight_dtype``, adapter in fp32; DPO's reference is the
      same UNet with the adapter disabled, so no second UNet is ever built.

    ``weights=False``: random weights from the UNet's config (see :func:`load_base_unet_and_scheduler`).
    """
    import torch

    unet, scheduler = load_base_unet_and_scheduler(cfg.model, weights=weights)
    master_dtype = torch.bfloat16 if cfg.master_weights == "bf16" else torch.float32
    reference = None
    targets = lora_target_modules(cfg, unet) if cfg.is_lora else None
    if cfg.has_reference_copy:
        # The policy's dtype (fp32) and mode: diffusers' ResnetBlock2D takes another memory layout in
        # train() than in eval() (a .contiguous() call), which changes bf16 conv results. SD UNets have
        # no dropout, so train mode changes nothing else.
        reference = copy.deepcopy(unet).requires_grad_(False).train()
        ref_dtype = {"auto": master_dtype, "fp32": torch.float32, "bf16": torch.bfloat16}[cfg.reference_dtype]
        if ref_dtype != torch.float32:
            torch.nn.Module.to(reference, dtype=ref_dtype)  # not diffusers' to(): it warns on every dtype cast
        if cfg.reference_device == "cpu":
            from .offload import offload_to_cpu

            offload_to_cpu(reference, device)
        else:
            reference.to(device)
    if master_dtype != torch.float32 and not cfg.is_lora:
        torch.nn.Module.to(unet, dtype=master_dtype)  # --master-weights bf16: trained by train.optimizers.BF16AdamW
    if cfg.is_lora:
        _to(unet, device, weight_dtype)
        add_lora(unet, cfg, targets)
        from diffusers.training_utils import cast_training_params

        cast_training_params(unet, dtype=torch.float32)  # adapter weights train in fp32
    else:
        unet.requires_grad_(True).to(device)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    if cfg.compile:
        compile_unet(unet)
        if reference is not None and cfg.reference_device != "cpu":  # offloaded layers move in hooks: left eager
            compile_unet(reference)
    return TrainModels(unet=unet, reference=reference, noise_scheduler=scheduler, family=unet_family(unet),
                       lora_target_modules=targets)


def _to(module, device, dtype):
    """Cast, THEN move: the frozen fp32 UNet never sits on the accelerator before its cast (an SDXL LoRA
    run's setup peak was its 10 GB fp32 copy, not the 5 GB it trains with). ``torch.nn.Module.to``, not
    diffusers' ``to()``, which warns on every dtype cast."""
    import torch

    if next(module.parameters()).dtype != dtype:
        torch.nn.Module.to(module, dtype=dtype)
    module.to(device)
    return module


def trainable_parameters(unet) -> list:
    return [p for p in unet.parameters() if p.requires_grad]


def build_optimizer(cfg: TrainConfig, params):
    """AdamW (method.md's settings); bitsandbytes' 8-bit AdamW with ``use_8bit_adam``;
    :class:`train.optimizers.BF16AdamW` with ``master_weights`` bf16; the same, stepped in the backward pass on
    buckets of finished gradients, with ``optimizer_in_backward`` (:class:`train.optimizers.OptimizerInBackward`,
    clipping each gradient tensor to ``max_grad_norm``)."""
    if cfg.optimizer_in_backward:
        from .optimizers import OptimizerInBackward

        return OptimizerInBackward(params, lambda all_params: _build_optimizer(cfg, all_params), lr=cfg.learning_rate,
                                   max_grad_norm=cfg.max_grad_norm)
    return _build_optimizer(cfg, params)


def _build_optimizer(cfg: TrainConfig, params):
    import torch

    kwargs = dict(lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.adam_weight_decay,
                  eps=cfg.adam_epsilon)
    if cfg.use_8bit_adam:
        bnb = require("bitsandbytes", "--use-8bit-adam")
        return bnb.optim.AdamW8bit(params, **kwargs)
    if cfg.master_weights == "bf16":
        from pipeline.runtime.seeds import derive_seed

        from .optimizers import BF16AdamW

        return BF16AdamW(params, seed=derive_seed(cfg.seed, "stochastic-rounding", 0), **kwargs)
    params = list(params)
    # One fused kernel instead of ~10 small ops per tensor: the default per-tensor loop was a third of
    # a tiny-model CPU step (bench/, docs/benchmarks.md). Fused needs floating tensors on CUDA or CPU.
    fused = bool(params) and all(
        isinstance(p, torch.Tensor) and p.device.type in ("cuda", "cpu") and p.is_floating_point() for p in params
    )
    return torch.optim.AdamW(params, fused=fused or None, **kwargs)


def build_lr_scheduler(cfg: TrainConfig, optimizer, total_steps: int):
    """diffusers' schedules (constant, constant_with_warmup, linear, cosine, ...), one step per optimizer step."""
    from diffusers.optimization import SchedulerType, get_scheduler

    names = [s.value for s in SchedulerType]
    if cfg.lr_scheduler not in names:
        raise UserError(f"Unknown --lr-scheduler '{cfg.lr_scheduler}'; choose one of {', '.join(names)}.")
    name = cfg.lr_scheduler
    if name == "constant" and cfg.lr_warmup_steps > 0:
        name = "constant_with_warmup"  # "constant" in diffusers ignores warmup
    return get_scheduler(name, optimizer=optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                         num_training_steps=max(total_steps, 1))

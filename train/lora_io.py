"""A LoRA adapter's files: adapter-only checkpoints, and the final adapter in the diffusers layout."""
from __future__ import annotations

from pathlib import Path

from pipeline.errors import UserError
from pipeline.models.training_output import LORA_WEIGHTS as LORA_FILE


def register_adapter_only_checkpoints(acc, unet) -> None:
    """LoRA checkpoints hold the adapter's weights only: the frozen base UNet is never saved again.

    ``acc``: the run's accelerate ``Accelerator``; ``unet``: the prepared LoRA UNet (its trainable
    parameters are the adapter's).

    On load the adapter's weights go in with ``strict=False`` (the base comes from --model,
    which must match on resume); a checkpoint lacking any adapter weight is refused.
    """
    trainable = {n for n, p in unet.named_parameters() if p.requires_grad}

    def save_hook(models, weights, _output_dir):
        for i, model in enumerate(models):
            if model is unet and i < len(weights):
                weights[i] = {k: v for k, v in weights[i].items() if k in trainable}

    def load_hook(models, input_dir):
        from safetensors.torch import load_file

        if unet not in models:
            return
        models.remove(unet)
        path = Path(input_dir) / "model.safetensors"
        if not path.exists():
            raise UserError(f"Checkpoint {input_dir} has no model.safetensors; pick another one.")
        result = unet.load_state_dict(load_file(str(path)), strict=False)
        missing = trainable & set(result.missing_keys)
        if missing or result.unexpected_keys:
            raise UserError(f"Checkpoint {input_dir} does not hold this LoRA adapter "
                            f"({len(missing)} adapter weights missing, {len(result.unexpected_keys)} unknown); "
                            "resume with the run's original LoRA settings.")

    acc.register_save_state_pre_hook(save_hook)
    acc.register_load_state_pre_hook(load_hook)


def lora_layers(peft_state: dict) -> dict:
    """The adapter's keys as the file stores them: diffusers' own names (``to_q.lora.down.weight``, what
    diffusers' UNet LoRA scripts write) when every key has one, else peft's (``lora_A`` / ``lora_B``), as
    diffusers' train_dreambooth_lora_sd3.py writes.

    diffusers' conversion only names the attention projections (``to_q/k/v``, ``to_out.0``); a file that
    mixes both namings is read by ``load_lora_weights`` as peft's and loses every converted layer without a
    word (SD3's ``add_*_proj``, or ``proj_in`` on a UNet, beside ``to_q``). Both namings load the same.
    """
    from diffusers.utils import convert_state_dict_to_diffusers

    converted = convert_state_dict_to_diffusers(dict(peft_state))
    mixed = any(".lora_A." in k or ".lora_B." in k for k in converted)
    return dict(peft_state) if mixed else converted


def save_lora(unet, output_dir: Path, family: str) -> Path:
    """LoRA weights in the diffusers layout that ``pipe.load_lora_weights(output_dir)`` reads (the family's
    pipeline class writes them: ``unet.*`` keys for SD1.5/SDXL, ``transformer.*`` for SD3; key names:
    :func:`lora_layers`)."""
    from peft.utils import get_peft_model_state_dict

    from pipeline.families import get_family

    layers = lora_layers(get_peft_model_state_dict(unet))
    # The adapter's config (lora_alpha above all) goes into the file's metadata: without it
    # load_lora_weights assumes alpha = rank and applies an alpha != rank adapter at the wrong scale.
    metadata = unet.peft_config["default"].to_dict()
    if isinstance(metadata.get("target_modules"), (set, list, tuple)):
        # peft keeps them as a set, whose order changes with Python's string hashing from run to run: sorted, the
        # same run writes the same file bytes (the adapter loads the same either way)
        metadata["target_modules"] = sorted(metadata["target_modules"])
    get_family(family).save_lora(layers, str(output_dir), metadata)
    return Path(output_dir) / LORA_FILE

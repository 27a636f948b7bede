"""The model card (README.md) written next to the trained weights."""
from __future__ import annotations

from pathlib import Path

OBJECTIVE_NAMES = {"mapo": "MaPO (margin-aware preference optimization, arXiv 2406.06424)",
                   "dpo": "Diffusion-DPO", "sft": "SFT on the chosen images",
                   "kto": "Diffusion-KTO (arXiv 2404.04465; sigmoid utility, desirable / undesirable examples)",
                   "spo": "SPO (step-aware preference optimisation, arXiv 2406.04314), online"}


def _pretrained_source(model: str) -> tuple[str, str]:
    """What ``from_pretrained`` must be given for ``model``, and a comment for the snippet: a built-in
    name is not a hub id, so its folder is written instead (sdxl-arch has none: random weights)."""
    from pipeline import builtin_models
    from pipeline.models import resolve_model_source

    if model in builtin_models.TINY_MODELS + builtin_models.WORLD_MODELS:
        return resolve_model_source(model), f"  # the built-in '{model}' (mapo-tools) lives here"
    if model in builtin_models.ARCH_MODELS:
        return model, "  # sdxl-arch: random weights built in memory by mapo-tools; there is no folder to load"
    return model, ""


def _load_snippet(model: str, family: str, lora: bool) -> str:
    """Plain diffusers code that loads the output: the family's pipeline class, and for a full fine-tune its
    denoiser class from the denoiser's folder (``unet/`` or ``transformer/``)."""
    from pipeline.families import get_family

    fam = get_family(family)
    pipe_cls, den_cls, den = fam.pipeline_class, fam.denoiser_class, fam.denoiser_dir
    source, note = _pretrained_source(model)
    if lora:
        return (f"from diffusers import {pipe_cls}\n\npipe = {pipe_cls}.from_pretrained(\"{source}\"){note}\n"
                "pipe.load_lora_weights(\"PATH_TO_THIS_FOLDER\")\n")
    return (f"from diffusers import {pipe_cls}, {den_cls}\n\n"
            f"{den} = {den_cls}.from_pretrained(\"PATH_TO_THIS_FOLDER/{den}\")\n"
            f"pipe = {pipe_cls}.from_pretrained(\"{source}\", {den}={den}){note}\n")


def _example_prompt(model: str) -> str:
    from pipeline import builtin_models

    return "a red circle at the top left" if model in builtin_models.WORLD_MODELS else "a cat on a sofa"


def _data_line(config: dict, data_info: dict) -> str:
    if config["objective"] == "spo":
        spo = config.get("spo", {})
        return (f"- **Prompts**: `{config['prompts']}`: {data_info.get('prompts')} prompts, sampled online at "
                f"{data_info.get('resolution')} px; preference model `{spo.get('preference_model')}` on each "
                f"candidate's predicted clean image, {spo.get('num_candidates')} candidates per step")
    if "examples" in data_info:  # unpaired (KTO) data
        data = (f"{data_info['examples']} unpaired examples ({100 * data_info.get('desirable_fraction', 0):.1f}% "
                "desirable)")
    else:
        data = f"{data_info.get('pairs')} preference pairs"
    return (f"- **Data**: `{config['data']}`: {data} precomputed at\n"
            f"  {data_info.get('resolution')} px (latents made by `{data_info.get('model')}`)")


def write_model_card(output_dir: str | Path, config: dict, final_metrics: dict, data_info: dict) -> Path:
    lora = config["lora_rank"] > 0
    keys = ("objective", "beta", "kto_lambda_desirable", "kto_lambda_undesirable", "learning_rate", "lr_scheduler",
            "lr_warmup_steps", "batch_size", "gradient_accumulation_steps", "world_size", "total_steps",
            "max_grad_norm", "mixed_precision", "lora_rank", "lora_alpha", "lora_target_modules",
            "gradient_checkpointing", "use_8bit_adam", "seed")
    hp = "\n".join(f"| {k} | {config.get(k)} |" for k in keys if k in config)
    metrics = "\n".join(f"| {k} | {v:.6g} |" for k, v in sorted(final_metrics.items())) or "| (none) | |"
    from pipeline.families import get_family

    fam = get_family(config.get("family", "sdxl"))
    output = "`pytorch_lora_weights.safetensors`" if lora else f"`{fam.denoiser_dir}/` (diffusers format, safetensors)"
    kind = "LoRA adapter" if lora else f"full {'UNet' if fam.denoiser_dir == 'unet' else 'transformer'} fine-tune"
    text = f"""---
base_model: {config['model']}
library_name: diffusers
tags: [text-to-image, diffusers, {'lora, ' if lora else ''}mapo-tools, {config['objective']}]
---

# {config['objective'].upper()} {kind} of `{config['model']}`

Trained with `mapo-train` (mapo-tools) using {OBJECTIVE_NAMES[config['objective']]}.

- **Base model**: `{config['model']}` ({config.get('family')})
{_data_line(config, data_info)}
- **Output**: {output}

## How to load

```python
{_load_snippet(config['model'], config.get('family', 'sdxl'), lora)}\
image = pipe("{_example_prompt(config['model'])}").images[0]
```

## Hyperparameters

| name | value |
|---|---|
{hp}

## Final metrics (last logged step)

| metric | value |
|---|---|
{metrics}

The full configuration is in `training_config.json`, the per-step log in `metrics.jsonl`.
"""
    path = Path(output_dir) / "README.md"
    path.write_text(text)
    return path

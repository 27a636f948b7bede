"""The model card (README.md) written next to the trained weights."""
from __future__ import annotations

import os
from pathlib import Path

from . import objectives


def _is_local(model: str) -> bool:
    from pipeline.models.builtin import get_builtin

    return get_builtin(model) is None and Path(model).expanduser().exists()


def _relative(path: str, output_dir: str | Path) -> str:
    """``path`` as the card shows it: relative to the output folder when it is a local path (no machine's
    absolute paths in a card that travels with the weights), else unchanged (a hub id, a built-in name)."""
    local = Path(path).expanduser()
    if not local.is_absolute() and not local.exists():
        return path
    return os.path.relpath(local.resolve(), Path(output_dir).resolve())


def _pretrained_source(model: str, output_dir: str | Path) -> tuple[str, str, str]:
    """What the snippet gives ``from_pretrained`` for ``model`` (a Python expression), an import it needs and
    a comment. A hub id as it is; a local base model relative to the output folder (``PATH_TO_THIS_FOLDER/..``);
    a built-in name, which is no hub id, through mapo-tools' own resolver (its folder is machine-specific);
    the *-arch built-ins (sdxl-arch, sd35-medium-arch, sd35-large-arch) have no folder at all (random weights)."""
    from pipeline.models.builtin import get_builtin

    builtin = get_builtin(model)
    if builtin is not None and builtin.has_folder:
        return (f'resolve_model_source("{model}")', "from pipeline.models.loading import resolve_model_source\n",
                f"  # mapo-tools' built-in '{model}' (no hub id): its folder on this machine")
    if builtin is not None:
        return (f'"{model}"', "",
                f"  # {model}: random weights built in memory by mapo-tools; there is no folder to load")
    if _is_local(model):
        return (f'"PATH_TO_THIS_FOLDER/{_relative(model, output_dir)}"', "",
                "  # the base model's folder, relative to this one")
    return f'"{model}"', "", ""


def _load_snippet(model: str, family: str, lora: bool, output_dir: str | Path, t5: bool | None = None) -> str:
    """Plain diffusers code that loads the output: the family's pipeline class, and for a full fine-tune its
    denoiser class from the denoiser's folder (``unet/`` or ``transformer/``). ``t5`` False (SD3 trained on
    ``precompute --no-t5`` latents), or a base folder saved without T5 (``shapes-sd3``; diffusers does not fill
    such a component in by itself): the pipeline is loaded without T5, as the latents were made."""
    from pipeline.families import get_family

    fam = get_family(family)
    pipe_cls, den_cls, den = fam.pipeline_class, fam.denoiser_class, fam.denoiser_dir
    source, extra_import, note = _pretrained_source(model, output_dir)
    folder_lacks_t5 = t5 is not False and fam.optional_t5 and _saved_without(model, fam.optional_t5)
    if (t5 is False or folder_lacks_t5) and fam.optional_t5:
        source += "".join(f", {component}=None" for component in fam.optional_t5)
        note = note or ("  # its folder has no T5 (zeros where T5 goes)" if folder_lacks_t5 else
                        "  # no T5: trained on latents made without it (zeros where T5 goes)")
    if lora:
        return (f"from diffusers import {pipe_cls}\n{extra_import}\npipe = {pipe_cls}.from_pretrained({source}){note}\n"
                "pipe.load_lora_weights(\"PATH_TO_THIS_FOLDER\")\n")
    return (f"from diffusers import {pipe_cls}, {den_cls}\n{extra_import}\n"
            f"{den} = {den_cls}.from_pretrained(\"PATH_TO_THIS_FOLDER/{den}\")\n"
            f"pipe = {pipe_cls}.from_pretrained({source}, {den}={den}){note}\n")


def _saved_without(model: str, components: tuple[str, ...]) -> bool:
    """Whether ``model``'s folder was saved without every one of ``components``; False when it cannot be read now
    (a hub id offline: the snippet then stays the plain one)."""
    from pipeline.errors import UserError
    from pipeline.models.loading import components_saved_as_none

    try:
        return set(components) <= set(components_saved_as_none(model))
    except (UserError, OSError):
        return False


def _sampling_args(max_sequence_length: int | None, resolution=None) -> str:
    """The pipeline-call arguments that sample as the model was trained: its data's resolution (``height`` and
    ``width``, pixels; the pipelines otherwise sample at the base model's default, e.g. 1024 for SDXL) and, for a
    T5 family, its latents' T5 token count."""
    size = f", height={int(resolution)}, width={int(resolution)}" if resolution else ""
    return size + (f", max_sequence_length={max_sequence_length}" if max_sequence_length else "")


def _example_prompt(model: str) -> str:
    from pipeline.models.builtin import DEFAULT_EXAMPLE_PROMPT, get_builtin

    builtin = get_builtin(model)
    return DEFAULT_EXAMPLE_PROMPT if builtin is None else builtin.example_prompt


def _data_line(config: dict, data_info: dict, output_dir: str | Path) -> str:
    if objectives.get(config["objective"]).reads == "prompts":  # sampled online (spo's record)
        spo = config.get("spo", {})
        return (f"- **Prompts**: `{_relative(config['prompts'], output_dir)}`: {data_info.get('prompts')} prompts, "
                f"sampled online at {data_info.get('resolution')} px; preference model "
                f"`{spo.get('preference_model')}` on each candidate's predicted clean image, "
                f"{spo.get('num_candidates')} candidates per step")
    if "examples" in data_info:  # unpaired (KTO) data
        data = (f"{data_info['examples']} unpaired examples ({100 * data_info.get('desirable_fraction', 0):.1f}% "
                "desirable)")
    else:
        data = f"{data_info.get('pairs')} preference pairs"
    made_by = _relative(str(data_info.get("model")), output_dir)
    return (f"- **Data**: `{_relative(config['data'], output_dir)}`: {data} precomputed at\n"
            f"  {data_info.get('resolution')} px (latents made by `{made_by}`)")


def write_model_card(output_dir: str | Path, config: dict, final_metrics: dict, data_info: dict) -> Path:
    """``output_dir``/README.md: what was trained on what, how to load it, hyperparameters and final metrics.

    No absolute path of the machine that trained it: local paths (base model, data) are written relative to
    ``output_dir``, a built-in model through mapo-tools' resolver, a hub id as it is."""
    lora = config["lora_rank"] > 0
    keys = ("objective", "beta", "kto_lambda_desirable", "kto_lambda_undesirable", "sft_weight", "learning_rate",
            "lr_scheduler", "lr_warmup_steps", "batch_size", "gradient_accumulation_steps", "world_size",
            "total_steps", "max_grad_norm", "mixed_precision", "lora_rank", "lora_alpha", "lora_target_modules",
            "gradient_checkpointing", "use_8bit_adam", "seed")
    shown = [k for k in keys if k in config and not (k == "sft_weight" and not config[k])]  # only when added
    hp = "\n".join(f"| {k} | {config.get(k)} |" for k in shown)
    metrics = "\n".join(f"| {k} | {v:.6g} |" for k, v in sorted(final_metrics.items())) or "| (none) | |"
    from pipeline.families import get_family

    fam = get_family(config.get("family", "sdxl"))
    output = "`pytorch_lora_weights.safetensors`" if lora else f"`{fam.denoiser_dir}/` (diffusers format, safetensors)"
    kind = "LoRA adapter" if lora else f"full {'UNet' if fam.denoiser_dir == 'unet' else 'transformer'} fine-tune"
    model = _relative(config["model"], output_dir)  # a local base model: relative to this folder
    from pipeline.models.training_output import text_encoding_of

    t5, max_len = text_encoding_of({**config, "data_info": data_info})  # SD3: how its text was encoded
    text = f"""---
{'' if _is_local(config['model']) else f"base_model: {model}{chr(10)}"}\
library_name: diffusers
tags: [text-to-image, diffusers, {'lora, ' if lora else ''}mapo-tools, {config['objective']}]
---

# {config['objective'].upper()} {kind} of `{model}`

Trained with `mapo-train` (mapo-tools) using {objectives.get(config['objective']).title}.

- **Base model**: `{model}` ({config.get('family')})
{_data_line(config, data_info, output_dir)}
- **Output**: {output}

## How to load

```python
{_load_snippet(config['model'], config.get('family', 'sdxl'), lora, output_dir, t5)}\
image = pipe("{_example_prompt(config['model'])}"{_sampling_args(max_len, data_info.get("resolution"))}).images[0]
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

"""Reading a ``mapo-train`` output folder: the one hand-off from training to evaluation and users' code.

A training output holds ``training_config.json`` (the resolved training config: base ``model``,
``objective``, pipeline ``family``, ...) and either the denoiser's folder (a full fine-tune: ``unet/``, a
diffusers ``UNet2DConditionModel`` folder, or ``transformer/`` for a transformer family such as SD3) or
``pytorch_lora_weights.safetensors`` (a LoRA in the diffusers format that ``pipe.load_lora_weights``
reads). ``mapo-eval`` and :func:`load_trained_pipeline` read it here; ``mapo-train`` writes it with the same names.

    from pipeline.models.training_output import load_trained_pipeline, read_training_output
    pipe = load_trained_pipeline("runs/mapo", device="cuda", dtype="fp16")
    image = pipe("a red circle at the top left", **read_training_output("runs/mapo").sampling_kwargs()).images[0]
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError
from pipeline.models.weights_files import check_readable, reading_weights

TRAINING_CONFIG = "training_config.json"  # mapo-eval recognises training outputs by this name
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' LoRA file name (load_lora_weights' default)
UNET_DIR = "unet"
DENOISER_DIRS = (UNET_DIR, "transformer")  # full fine-tunes: the family's denoiser_dir (pipeline.families)


@dataclass(frozen=True)
class TrainingOutput:
    """A ``mapo-train`` output folder: a full UNet (``unet/``) or a LoRA (``pytorch_lora_weights.safetensors``)."""

    name: str
    path: str
    kind: str  # "unet" (a full fine-tune of the denoiser, UNet or transformer) or "lora"
    base_model: str | None
    objective: str | None
    family: str | None = None  # "sdxl" | "sd15" | "sd3": the pipeline family (training_config.json)
    resolution: int | None = None  # the training data's image side in pixels
    denoiser_dir: str = UNET_DIR  # a full fine-tune's folder: unet/ or transformer/
    # SD3: how its training text was encoded (precompute --t5/--no-t5, --max-sequence-length); None: not
    # recorded (then the pipeline's defaults: T5 on, 256 tokens)
    t5: bool | None = None
    max_sequence_length: int | None = None

    def text_encoding(self) -> dict:
        """What the candidate's text conditioning was made with, for reports: ``{"t5": bool,
        "max_sequence_length": int}`` (SD3), ``{}`` when not recorded or not an SD3 model."""
        return {k: v for k, v in (("t5", self.t5), ("max_sequence_length", self.max_sequence_length)) if v is not None}

    def sampling_kwargs(self) -> dict:
        """Pipeline-call settings that sample as the model was trained: ``{"max_sequence_length": L}`` (the T5
        token count of its training latents; SD3), else ``{}``."""
        return {"max_sequence_length": self.max_sequence_length} if self.max_sequence_length else {}

    def skipped_components(self) -> tuple[str, ...]:
        """Pipeline components to leave out: the family's optional T5 (SD3: ``text_encoder_3``/``tokenizer_3``) for
        a model trained on ``precompute --no-t5`` latents (the pipeline then puts zeros where T5 goes, as in
        training); else none."""
        if self.t5 is not False or not self.family:
            return ()
        from pipeline.families import get_family

        return get_family(self.family).optional_t5 or ()

    def fingerprint(self) -> str:
        """Size and mtime of the weights: a retrained folder is not mistaken for the old one."""
        root = Path(self.path)
        files = sorted((root / self.denoiser_dir).glob("*")) if self.kind == "unet" else [root / LORA_WEIGHTS]
        return ";".join(f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in files if f.is_file())


def read_training_output(path: str, name: str | None = None) -> TrainingOutput:
    """The training output in folder ``path`` (``name`` defaults to the folder's name).

    Raises:
        UserError: the path does not exist, the folder is not a mapo-train output, or its config is
            not JSON.
        WeightsFileError: its weights are unreadable (checked here, before anything records the
            output: a rerun with the repaired file is then not refused).
    """
    root = Path(path).expanduser()
    config_file = root / TRAINING_CONFIG
    denoiser_dir = next((d for d in DENOISER_DIRS if (root / d / "config.json").is_file()), UNET_DIR)
    has_unet, has_lora = (root / denoiser_dir / "config.json").is_file(), (root / LORA_WEIGHTS).is_file()
    if not root.exists():
        raise UserError(f"candidate '{path}' does not exist: pass a mapo-train --output-dir")
    if not root.is_dir() or not config_file.is_file() or not (has_unet or has_lora):
        raise UserError(
            f"candidate '{path}' is not a mapo-train output: expected {TRAINING_CONFIG} and either unet/ or "
            f"transformer/ (full fine-tune) or {LORA_WEIGHTS} (LoRA)"
        )
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"candidate '{path}': {TRAINING_CONFIG} is not valid JSON ({exc})") from None
    # A full UNet wins when both are there: it is what the trainer saved last for a full fine-tune.
    kind = "unet" if has_unet else "lora"
    resolution = (config.get("data_info") or {}).get("resolution")
    t5, max_len = text_encoding_of(config)
    out = TrainingOutput(name or root.resolve().name, str(root.resolve()), kind, config.get("model"),
                         config.get("objective"), config.get("family"), int(resolution) if resolution else None,
                         denoiser_dir, t5, max_len)
    check_readable(root / denoiser_dir if kind == "unet" else root / LORA_WEIGHTS, f"candidate {out.name}")
    return out


def text_encoding_of(config: dict) -> tuple[bool | None, int | None]:
    """``(t5, max_sequence_length)`` an SD3 run's training text was encoded with: from its ``data_info`` when
    recorded there, else from the manifest of its latent folder (``data``) when that folder is still there;
    ``(None, None)`` when neither says (or the model has no T5)."""
    from pipeline.families import BY_NAME

    fam = BY_NAME.get(config.get("family"))
    if fam is None or fam.max_sequence_length is None:
        return None, None
    info = config.get("data_info") or {}
    if "t5" not in info and "max_sequence_length" not in info and config.get("data"):
        try:
            manifest = json.loads((Path(config["data"]).expanduser() / "manifest.json").read_text())
            info = manifest.get("latents") or {}
        except (OSError, ValueError):
            info = {}
    t5, max_len = info.get("t5"), info.get("max_sequence_length")
    return (bool(t5) if t5 is not None else None), (int(max_len) if max_len else None)


def load_unet(output: TrainingOutput, dtype=None):
    """The fine-tuned denoiser of a full fine-tune (on the CPU, in ``dtype``): a ``UNet2DConditionModel``, or
    the family's transformer class (``SD3Transformer2DModel``).

    Raises:
        UserError: the folder cannot be loaded (one line naming it).
    """
    from pipeline.families import SD15, family_of_denoiser

    folder = os.path.join(output.path, output.denoiser_dir)
    try:
        with reading_weights(folder, f"candidate {output.name}"):
            try:
                cls = family_of_denoiser(json.loads(Path(folder, "config.json").read_text())).denoiser_cls()
            except (ValueError, OSError):
                cls = SD15.denoiser_cls()
            return cls.from_pretrained(folder, torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(
            f"candidate {output.name}: could not load {folder}: {' '.join(str(exc).split())[:200]}"
        ) from None


def load_lora(pipe, output: TrainingOutput) -> None:
    """Load a LoRA output into ``pipe`` (``pipe.unload_lora_weights()`` takes it out again).

    Raises:
        UserError: the weights cannot be loaded into this pipeline (one line naming the folder).
    """
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()  # "no LoRA keys for the text encoders": expected, the trainer tunes the UNet
    try:
        with reading_weights(os.path.join(output.path, LORA_WEIGHTS), f"candidate {output.name}"):
            pipe.load_lora_weights(output.path)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise UserError(f"candidate {output.name}: could not load the LoRA in {output.path}: "
                        f"{' '.join(str(exc).split())[:200]}") from None
    finally:
        dlog.set_verbosity(level)


def load_trained_pipeline(path: str, *, model: str | None = None, device: str = "auto", dtype: str = "auto"):
    """The base text-to-image pipeline with a training output's UNet or LoRA in it, ready to sample.

    ``model`` defaults to the base model the run was trained from (its ``training_config.json``);
    ``device`` and ``dtype`` as in :func:`pipeline.models.loading.load_pipeline`. An SD3 model trained on
    ``precompute --no-t5`` latents is loaded without T5 (``text_encoder_3=None``: zeros where T5 goes, as in
    training); sample with ``pipe(prompt, **read_training_output(path).sampling_kwargs())`` to use the T5 token
    count it was trained with (``max_sequence_length``).

    Raises:
        UserError: not a training output, the base model is not available, or the weights do not load.
    """
    from pipeline.models.loading import load_pipeline, resolve_device, resolve_dtype

    output = read_training_output(path)
    base = model or output.base_model
    if not base:
        raise UserError(f"{path}: {TRAINING_CONFIG} records no base model; pass model=")
    if model and output.family:
        from pipeline.models.loading import model_family_of

        family = model_family_of(model).name
        if family != output.family:
            from pipeline.families import a_family

            raise UserError(f"{path} was trained on {a_family(output.family)} model ('{output.base_model}'); '{model}' "
                            f"is {a_family(family)} model, which its weights do not fit: pass "
                            f"{a_family(output.family)} model")
    dev = resolve_device(device)
    pipe = load_pipeline(base, dtype=resolve_dtype(dtype, dev), device=dev, skip=output.skipped_components())
    if output.kind == "unet":
        from pipeline.families import family_of_pipe

        fam = family_of_pipe(pipe)
        fam.set_denoiser(pipe, load_unet(output, fam.denoiser(pipe).dtype).to(pipe.device).eval())
    else:
        load_lora(pipe, output)
    return pipe

"""The trainer's typed configuration: defaults, YAML merge (CLI wins) and validation.

``mapo-train`` options and ``--config file.yaml`` keys are the same names (dashes or
underscores). Precedence: defaults < YAML < options given on the command line.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.clip_embed import STYLE_TEXTS
from pipeline.errors import UserError
from pipeline.models import DEFAULT_MODEL
from pipeline.textfiles import read_text

from .losses import OBJECTIVES

MIXED_PRECISION = ("no", "fp16", "bf16")
REPORT_TO = ("auto", "none", "tensorboard", "wandb", "all")
DEFAULT_BETA = {"mapo": 0.1, "dpo": 5000.0, "sft": None}  # method.md: MaPO 0.1, Diffusion-DPO 5000
DEFAULT_LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
CONFIG_FILE = "training_config.json"  # the eval command detects training outputs by this name


@dataclass
class TrainConfig:
    data: str = ""
    model: str = DEFAULT_MODEL
    output_dir: str = "runs/mapo"
    objective: str = "mapo"
    beta: float | None = None  # None: the objective's default (DEFAULT_BETA)
    mapo_a: float = 0.5  # MaPO's s(e) constant; fixed upstream, exposed for ablations only
    # How long
    max_steps: int | None = None  # optimizer steps; None: num_epochs over the data
    num_epochs: int = 1
    batch_size: int = 4  # pairs per process per micro-batch
    gradient_accumulation_steps: int = 1
    # Optimizer (method.md: AdamW 0.9/0.999, wd 1e-2, eps 1e-8, grad clip 1.0, constant LR)
    learning_rate: float = 1e-5
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    use_8bit_adam: bool = False
    # Model
    lora_rank: int = 0  # 0 = full UNet fine-tune
    lora_alpha: float | None = None  # None: = lora_rank
    lora_target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"
    random_flip: bool = False  # use the horizontally flipped latents when precompute cached them
    # Checkpoints
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3
    resume_from_checkpoint: str | None = None  # "latest" or a checkpoint folder
    overwrite: bool = False
    max_consecutive_nonfinite: int = 10
    seed: int = 0
    # Validation and logging
    validation_steps: int = 0  # 0 = only before and after training (when prompts are given)
    validation_prompts: list[str] = field(default_factory=list)
    validation_seeds: list[int] = field(default_factory=lambda: [0, 1])
    validation_inference_steps: int = 25
    validation_guidance_scale: float = 5.0
    validation_resolution: int | None = None  # None: the data's resolution
    validation_metrics: list[str] = field(default_factory=list)  # pipeline.scorers metrics; empty = none
    validation_tiny_scorers: bool = False  # tiny random scorer weights built offline (tests, demo)
    validation_style: str | None = None  # cartoon | pixel: the style metric's texts
    validation_style_text: str | None = None  # or the style's text itself (wins over validation_style)
    report_to: str = "auto"  # auto = tensorboard when installed
    logging_steps: int = 1
    debug_weight_checksums: bool = False  # per-rank weight checksum per step (multi-process tests)

    @property
    def resolved_beta(self) -> float | None:
        return self.beta if self.beta is not None else DEFAULT_BETA[self.objective]

    @property
    def is_lora(self) -> bool:
        return self.lora_rank > 0

    def validate(self) -> "TrainConfig":
        if not self.data:
            raise UserError("--data is required: the folder written by `mapo-data precompute`.")
        if self.objective not in OBJECTIVES:
            raise UserError(f"Unknown objective '{self.objective}'; choose one of {', '.join(OBJECTIVES)}.")
        if self.mixed_precision not in MIXED_PRECISION:
            raise UserError(f"Unknown --mixed-precision '{self.mixed_precision}'; choose one of {', '.join(MIXED_PRECISION)}.")
        if self.report_to not in REPORT_TO:
            raise UserError(f"Unknown --report-to '{self.report_to}'; choose one of {', '.join(REPORT_TO)}.")
        positive = {"batch_size": self.batch_size, "gradient_accumulation_steps": self.gradient_accumulation_steps,
                    "num_epochs": self.num_epochs, "checkpointing_steps": self.checkpointing_steps,
                    "learning_rate": self.learning_rate, "max_grad_norm": self.max_grad_norm,
                    "validation_inference_steps": self.validation_inference_steps, "logging_steps": self.logging_steps,
                    "max_consecutive_nonfinite": self.max_consecutive_nonfinite}
        if self.max_steps is not None:
            positive["max_steps"] = self.max_steps
        if self.checkpoints_total_limit is not None:
            positive["checkpoints_total_limit"] = self.checkpoints_total_limit
        if self.beta is not None:
            positive["beta"] = self.beta
        for name, value in positive.items():
            if not value > 0:
                raise UserError(f"--{name.replace('_', '-')} must be > 0, got {value}.")
        for name in ("lora_rank", "lr_warmup_steps", "validation_steps"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}.")
        if self.is_lora and not self.lora_target_modules:
            raise UserError("--lora-target-modules is empty; name at least one module (e.g. to_q,to_k,to_v,to_out.0).")
        self._validate_metrics()
        return self

    def _validate_metrics(self) -> None:
        """--validation-metrics: names, style and prompts checked before any model is loaded."""
        if not self.validation_metrics:
            return
        from pipeline.scorers import check_metrics, check_prompts

        self.validation_metrics = check_metrics(self.validation_metrics)
        if self.validation_style is not None and self.validation_style not in STYLE_TEXTS:
            raise UserError(f"Unknown --validation-style '{self.validation_style}'; choose one of "
                            f"{', '.join(STYLE_TEXTS)} or pass --validation-style-text.")
        if "style" in self.validation_metrics and not (self.validation_style or self.validation_style_text):
            raise UserError("--validation-metrics style needs --validation-style cartoon|pixel or --validation-style-text.")
        if "world-style" in self.validation_metrics and not self.validation_style:
            raise UserError("--validation-metrics world-style needs --validation-style cartoon|pixel.")
        if not self.validation_prompts:
            raise UserError("--validation-metrics scores the validation images: pass --validation-prompts too.")
        check_prompts(self.validation_metrics, self.validation_prompts)

    def scorer_options(self):
        """pipeline.scorers.ScorerOptions for --validation-metrics (tiny random weights with --validation-tiny-scorers)."""
        from pipeline.scorers import ScorerOptions, tiny_scorer_options

        style, opposite = STYLE_TEXTS.get(self.validation_style or "", (None, "a realistic photo"))
        style = self.validation_style_text or style
        if self.validation_tiny_scorers:
            return tiny_scorer_options(style_text=style, opposite_text=opposite, style=self.validation_style)
        return ScorerOptions(style_text=style, opposite_text=opposite, style=self.validation_style)

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["beta"] = self.resolved_beta
        out["lora_alpha"] = self.lora_alpha if self.lora_alpha is not None else (self.lora_rank or None)
        return out


FIELD_NAMES = {f.name for f in dataclasses.fields(TrainConfig)}
_LIST_FIELDS = {"lora_target_modules", "validation_prompts", "validation_seeds", "validation_metrics"}


def _normalise_key(key: str) -> str:
    return str(key).strip().lstrip("-").replace("-", "_")


def load_yaml(path: str | Path) -> dict:
    """Read a ``--config`` YAML file into ``{field: value}``; unknown keys are refused."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config file {path} does not exist.")
    try:
        raw = yaml.safe_load(read_text(path, "--config file")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"--config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"--config file {path} must hold a mapping of option: value.")
    values = {_normalise_key(k): v for k, v in raw.items()}
    unknown = sorted(set(values) - FIELD_NAMES)
    if unknown:
        raise UserError(f"--config file {path} has unknown keys: {', '.join(unknown)}.")
    for key in _LIST_FIELDS & set(values):
        if isinstance(values[key], str):
            values[key] = split_list(values[key])
    return values


def split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_config(cli_values: dict, config_file: str | None = None) -> TrainConfig:
    """Defaults < YAML file < options the user actually typed (``cli_values``)."""
    merged: dict = {}
    if config_file:
        merged.update(load_yaml(config_file))
    merged.update({_normalise_key(k): v for k, v in cli_values.items()})
    unknown = sorted(set(merged) - FIELD_NAMES)
    if unknown:  # pragma: no cover - the CLI only passes known names
        raise UserError(f"unknown options: {', '.join(unknown)}")
    try:
        cfg = TrainConfig(**merged)
    except TypeError as exc:  # pragma: no cover
        raise UserError(str(exc)) from None
    _coerce_types(cfg)
    return cfg.validate()


def _coerce_types(cfg: TrainConfig) -> None:
    """YAML may give ints for floats, or a number for a list; make the types what the fields say."""
    for name in ("beta", "learning_rate", "mapo_a", "max_grad_norm", "lora_alpha", "validation_guidance_scale",
                 "adam_beta1", "adam_beta2", "adam_weight_decay", "adam_epsilon"):
        value = getattr(cfg, name)
        if value is not None:
            try:
                setattr(cfg, name, float(value))
            except (TypeError, ValueError):
                raise UserError(f"{name} must be a number, got {value!r}.") from None
    for name in _LIST_FIELDS:
        value = getattr(cfg, name)
        if not isinstance(value, (list, tuple)):
            value = [value]
        setattr(cfg, name, [int(v) for v in value] if name == "validation_seeds" else [str(v) for v in value])

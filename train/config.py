"""The trainer's typed configuration: every ``mapo-train`` option declared once, and its checks.

``mapo-train`` options and ``--config file.yaml`` keys are the same names (dashes or
underscores). Precedence: defaults < YAML < options given on the command line
(:func:`pipeline.cli.options.command`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pipeline.cli.options import (
    RESOLUTION_HELP,
    at_least,
    between,
    builtin_models_help,
    check_options,
    guidance_scale_option,
    model_option,
    num_inference_steps_option,
    option,
    positive,
    prompt_column_option,
    prompt_split_option,
    resolution_option,
)
from pipeline.data.prompt_prefixes import STYLE_TEXTS
from pipeline.errors import UserError
from pipeline.families import FAMILIES
from pipeline.judges.registry import judge_names

from . import objectives

OBJECTIVES = objectives.names()  # train/objectives.py declares them; registration order
MIXED_PRECISION = ("no", "fp16", "bf16")
MASTER_WEIGHTS = ("fp32", "bf16")
REFERENCE_DTYPES = ("auto", "fp32", "bf16")
REFERENCE_DEVICES = ("same", "cpu")
REPORT_TO = ("auto", "none", "tensorboard", "wandb", "all")
LR_SCHEDULERS = ("constant", "linear", "cosine", "cosine_with_restarts", "polynomial", "constant_with_warmup")
P_IO, P_OBJ, P_LEN, P_OPT, P_MODEL, P_CKPT, P_VAL, P_LOG = (
    "Data and output", "Objective", "How long", "Optimizer", "Model", "Checkpoints", "Validation", "Logging")
P_SPO = "Online (SPO)"


def _family_lora_targets() -> str:
    """``--lora-target-modules``' default per family, for its help: "sd15, sdxl: to_k,... ; sd3: attn...."."""
    by_targets: dict[tuple[str, ...], list[str]] = {}
    for fam in sorted(FAMILIES, key=lambda f: f.name):
        by_targets.setdefault(fam.lora_target_modules, []).append(fam.name)
    return "; ".join(f"{', '.join(names)}: {','.join(targets)}" for targets, names in by_targets.items())


def _data_help() -> str:
    """``--data``'s help: what each objective reads from the latent folder, from the objectives' ``reads``
    (:mod:`train.objectives`), e.g. "mapo, dpo, sft: its preference pairs; kto: ...; spo reads --prompts instead"."""
    what = {"pairs": "its preference pairs",
            "examples": "its pairs read as examples (chosen = desirable, rejected = undesirable) or its unpaired "
                        "labelled examples"}
    by_reads: dict[str, list[str]] = {}
    for spec in objectives.specs():
        by_reads.setdefault(spec.reads, []).append(spec.name)
    parts = [f"{', '.join(names)}: {what[reads]}" for reads, names in by_reads.items() if reads in what]
    parts += [f"{', '.join(names)} reads --prompts instead" for reads, names in by_reads.items() if reads == "prompts"]
    return "Latent folder written by `mapo-data precompute` (" + "; ".join(parts) + ")."


@dataclass
class TrainConfig:
    """``mapo-train``: every option, declared once (:mod:`pipeline.cli.options`). Defaults are the paper's
    (method.md: AdamW 0.9/0.999, weight decay 1e-2, eps 1e-8, grad clip 1.0, constant LR; beta 0.1 for
    MaPO, 5000 for Diffusion-DPO; Diffusion-KTO's beta 1000 and lambdas 1 from its public code,
    jacklishufan/diffusion-kto); names follow the diffusers training scripts."""

    data: str | None = option(None, panel=P_IO, help=_data_help())
    model: str | None = model_option(None, help=(
        f"Base model the latents were made with: hub id, local diffusers folder, or built-in ({builtin_models_help()}) "
        "(default: the model the latents record)."))
    output_dir: str = option("runs/mapo", panel=P_IO, help=(
        "Where checkpoints, logs, the trained denoiser (unet/, SD3: transformer/) or LoRA and the model card go."))
    objective: str = option("mapo", choices=OBJECTIVES, panel=P_OBJ, help=objectives.objective_help())
    beta: float | None = option(None, check=positive, panel=P_OBJ, help=objectives.beta_help())
    kto_lambda_desirable: float = option(1.0, check=positive, panel=P_OBJ, help=(
        "kto: weight of the desirable examples' loss (Diffusion-KTO's lambda_D)."))
    kto_lambda_undesirable: float = option(1.0, check=positive, panel=P_OBJ, help=(
        "kto: weight of the undesirable examples' loss (Diffusion-KTO's lambda_U)."))
    sft_weight: float = option(0.0, check=at_least(0), panel=P_OBJ, help=(
        "dpo: add this weight times the chosen images' denoising error (an SFT term, as TRL's rpo_alpha) to the "
        "loss; 0: none."))
    mapo_a: float = option(0.5, check=positive, hidden=True, panel=P_OBJ, help=(
        "MaPO's s(e) constant; fixed upstream, exposed for ablations only."))
    max_steps: int | None = option(None, check=positive, panel=P_LEN, help=(
        "Optimizer steps (default: --num-epochs over the data)."))
    num_epochs: int = option(1, check=positive, panel=P_LEN, help="Epochs when --max-steps is not given.")
    batch_size: int = option(4, check=positive, panel=P_LEN, help=(
        "Pairs (or unpaired examples) per process per micro-batch."))
    gradient_accumulation_steps: int = option(1, check=positive, panel=P_LEN, help="Micro-batches per optimizer step.")
    learning_rate: float = option(1e-5, check=positive, panel=P_OPT, help="Peak learning rate.")
    lr_scheduler: str = option("constant", choices=LR_SCHEDULERS, panel=P_OPT, help=(
        "constant, linear, cosine, cosine_with_restarts, polynomial, constant_with_warmup."))
    lr_warmup_steps: int = option(0, check=at_least(0), panel=P_OPT, help="Linear warmup steps.")
    adam_beta1: float = option(0.9, panel=P_OPT, help="AdamW beta1.")
    adam_beta2: float = option(0.999, panel=P_OPT, help="AdamW beta2.")
    adam_weight_decay: float = option(1e-2, panel=P_OPT, help="AdamW weight decay.")
    adam_epsilon: float = option(1e-8, panel=P_OPT, help="AdamW epsilon.")
    max_grad_norm: float = option(1.0, check=positive, panel=P_OPT, help="Gradient clipping norm.")
    use_8bit_adam: bool = option(False, panel=P_OPT, help="bitsandbytes' 8-bit AdamW (CUDA; needs bitsandbytes).")
    optimizer_in_backward: bool = option(False, panel=P_OPT, help=(
        "Update the weights inside the backward pass as their gradients finish (in buckets of 2**24 values), then "
        "free those gradients (torchtune's optimizer-in-backward): all gradients are never in memory at once. One "
        "process, --gradient-accumulation-steps 1, no fp16; --max-grad-norm then clips each weight tensor's gradient "
        "on its own, not the global norm."))
    lora_rank: int = option(0, check=at_least(0), panel=P_MODEL, help=(
        "LoRA rank; 0 = full fine-tune of the denoiser (UNet, SD3: transformer)."))
    lora_alpha: float | None = option(None, panel=P_MODEL, help="LoRA alpha (default: the rank).")
    lora_target_modules: list[str] | None = option(None, panel=P_MODEL, help=(
        "Comma-separated denoiser modules that get LoRA (peft target_modules: a name matches each module whose "
        f"dotted path is or ends with it). Default: the model family's ({_family_lora_targets()})."))
    gradient_checkpointing: bool = option(False, panel=P_MODEL, help=(
        "Trade compute for memory in the denoiser (UNet, SD3: transformer)."))
    compile: bool = option(False, panel=P_MODEL, help=(
        "Regional torch.compile: compile each of the UNet's transformer blocks (diffusers' compile_repeated_blocks, "
        "inductor; not SD3, whose transformer declares none) to fuse their small kernels. The first steps are "
        "slower while it compiles; whether it pays off depends on the GPU and batch: measure with python -m bench "
        "train --configurations mapo,mapo-compile."))
    mixed_precision: str = option("no", choices=MIXED_PRECISION, panel=P_MODEL, help="no, fp16 (CUDA) or bf16.")
    master_weights: str = option("fp32", choices=MASTER_WEIGHTS, panel=P_MODEL, help=(
        "Full fine-tune: dtype of the trained weights. fp32, or bf16 with bf16 AdamW moments and every update "
        "stochastically rounded (6 instead of 16 bytes per weight; needs --mixed-precision bf16)."))
    reference_dtype: str = option("auto", choices=REFERENCE_DTYPES, panel=P_MODEL, help=(
        "DPO, KTO and SPO full fine-tunes: dtype of the frozen reference UNet; auto = the trained weights' (then "
        "the step-0 loss is ln 2). bf16 under fp32 weights halves it, but the reference then computes other numbers."))
    reference_device: str = option("same", choices=REFERENCE_DEVICES, panel=P_MODEL, help=(
        "DPO, KTO and SPO full fine-tunes: same, or cpu = keep the reference UNet in CPU memory and copy each layer "
        "to the GPU only for its forward (slower)."))
    random_flip: bool = option(False, panel=P_MODEL, help=(
        "Use mirrored latents half of the time (needs precompute --flip both)."))
    checkpointing_steps: int = option(
        500, check=positive, panel=P_CKPT, help="Save a resumable checkpoint every N steps."
    )
    checkpoints_total_limit: int | None = option(
        3, check=positive, panel=P_CKPT, help="Keep only the newest N checkpoints."
    )
    resume_from_checkpoint: str | None = option(None, panel=P_CKPT, help="'latest' or a checkpoint-<step> folder.")
    overwrite: bool = option(False, panel=P_CKPT, help="Start over in an output dir that holds another run.")
    max_consecutive_nonfinite: int = option(10, check=positive, panel=P_CKPT, help=(
        "Stop after this many non-finite losses in a row."))
    seed: int = option(0, panel=P_LEN, help="Seed for data order, noise and timesteps.")
    validation_steps: int = option(0, check=at_least(0), panel=P_VAL, help=(
        "Validation images every N steps (0: only before and after training)."))
    validation_prompts: list[str] = option(default_factory=list, separator=None, panel=P_VAL, help=(
        "Validation prompt (repeat the option for several)."))
    validation_seeds: list[int] = option(default_factory=lambda: [0, 1], panel=P_VAL, help=(
        "Comma-separated seeds, one image per prompt and seed."))
    validation_inference_steps: int = option(
        25, check=positive, panel=P_VAL, help="Denoising steps for validation images."
    )
    validation_guidance_scale: float = option(5.0, panel=P_VAL, help="Guidance scale for validation images.")
    validation_resolution: int | None = option(None, panel=P_VAL, help=(
        "Validation image side in pixels (a multiple of 8; 16 for SD3 and Flux); default: the data's resolution."))
    validation_metrics: list[str] = option(default_factory=list, panel=P_VAL, help=(
        f"Comma-separated judges of the validation images, logged as val/<metric>: {', '.join(judge_names())} "
        "(default: none)."))
    validation_tiny_scorers: bool = option(False, panel=P_VAL, help=(
        "Score with tiny random judge weights built offline (tests, demo)."))
    validation_style: str | None = option(None, choices=tuple(STYLE_TEXTS), panel=P_VAL, help=(
        "cartoon or pixel: the style the style and world-style metrics check."))
    validation_style_text: str | None = option(None, panel=P_VAL, help=(
        "Text of the style for the 'style' metric (instead of --validation-style)."))
    # --objective spo (train/spo.py); defaults from the public SPO code (RockeyCoss/SPO configs/basic_config.py
    # and its SD1.5 / SDXL experiment configs), arXiv 2406.04314.
    prompts: str | None = option(None, panel=P_SPO, help=(
        "spo: prompt file (.txt, .jsonl, .csv, .parquet), folder of Parquet shards or datasets name."))
    prompt_split: str = prompt_split_option(panel=P_SPO, prefix="spo: ")
    prompt_column: str | None = prompt_column_option(panel=P_SPO, prefix="spo: ")
    preference_model: str = option("pickscore", panel=P_SPO, help=(
        "spo: the judge of each candidate's decoded predicted clean image: "
        f"{', '.join(judge_names())} (lower-is-better ones turned around); style and "
        "world-style read --validation-style, --validation-tiny-scorers applies."))
    num_candidates: int | None = option(None, check=at_least(2), panel=P_SPO, help=(
        "spo: x_{t-1} candidates drawn from each x_t (default: 4 for SD1.5, 2 for SDXL, as upstream)."))
    spo_eta: float = option(1.0, check=between(1e-6, 1.0), panel=P_SPO, help=(
        "spo: DDIM eta of the sampler, in (0, 1] (1.0 upstream; above 1 DDIM's variance exceeds the step's)."))
    spo_threshold: float | None = option(None, check=between(0, 0.999999), panel=P_SPO, help=(
        "spo: keep a best/worst pair when the softmax of their two rewards differs by more than this "
        "(default: 0.3 for SD1.5, 0.4 for SDXL, as upstream)."))
    spo_start_step: int = option(4, check=at_least(0), panel=P_SPO, help=(
        "spo: sampling steps before the first compared step (upstream divert_start_step 4)."))
    spo_clip: float = option(0.1, check=between(1e-6, 0.999999), hidden=True, panel=P_SPO, help=(
        "spo: the policy/reference ratio is clipped to [1 - c, 1 + c] (upstream eps 0.1)."))
    num_inference_steps: int = num_inference_steps_option(20, panel=P_SPO, prefix="spo: ")
    guidance_scale: float = guidance_scale_option(5.0, panel=P_SPO, prefix="spo: ")
    resolution: int | None = resolution_option(panel=P_SPO, help="spo: " + RESOLUTION_HELP)
    report_to: str = option("auto", choices=REPORT_TO, panel=P_LOG, help=(
        "auto (tensorboard when installed), tensorboard, wandb, all, none."))
    logging_steps: int = option(1, check=positive, panel=P_LOG, help="Log metrics every N steps.")
    debug_weight_checksums: bool = option(False, hidden=True, panel=P_LOG, help=(
        "Write a per-rank weight checksum per step (multi-process tests)."))

    @property
    def spec(self) -> objectives.ObjectiveSpec:
        """The declaration of ``--objective`` (:mod:`train.objectives`)."""
        return objectives.get(self.objective)

    @property
    def resolved_beta(self) -> float | None:
        return self.beta if self.beta is not None else self.spec.default_beta

    @property
    def is_lora(self) -> bool:
        return self.lora_rank > 0

    @property
    def has_reference_copy(self) -> bool:
        """A full fine-tune of a reference objective keeps a frozen copy of the base UNet (LoRA: adapter off)."""
        return self.spec.needs_reference and not self.is_lora

    def validate(self) -> "TrainConfig":
        """The declared checks, then the rules between options.

        Raises:
            UserError: a value outside its choices or range, LoRA without target modules, validation
                metrics without prompts or style, prompts a metric cannot read.
        """
        check_options(self)
        self._validate_inputs()
        if self.sft_weight and not self.spec.takes_sft_term:
            takers = ", ".join(sp.name for sp in objectives.specs() if sp.takes_sft_term)
            raise UserError(f"--sft-weight applies to --objective {takers} (a pair objective without an SFT term of "
                            f"its own), not --objective {self.objective}; leave it out.")
        if self.is_lora and self.lora_target_modules is not None and not self.lora_target_modules:
            raise UserError("--lora-target-modules is empty; name at least one module (e.g. to_q,to_k,to_v,to_out.0) "
                            "or leave it out for the model family's.")
        if self.validation_resolution is not None and (
            self.validation_resolution < 8 or self.validation_resolution % 8
        ):
            raise UserError(
                f"--validation-resolution must be a positive multiple of 8, got {self.validation_resolution}."
            )
        self._validate_metrics()
        self._validate_memory_options()
        return self

    def _validate_inputs(self) -> None:
        """Which input each objective reads (its ``reads``): latents (--data) or prompts (--prompts and --model)."""
        if self.spec.reads == "prompts":
            if not self.prompts or not self.model:
                raise UserError(f"--objective {self.objective} samples its own images: pass --prompts FILE and "
                                "--model (--data latents are not used).")
            if self.data:
                raise UserError(f"--data is not used by --objective {self.objective} (it samples from --prompts); "
                                "drop it.")
            from pipeline.judges.registry import check_judges

            (self.preference_model,) = check_judges([self.preference_model])
            if self.preference_model in ("style", "world-style") and not self.validation_style and \
                    not (self.preference_model == "style" and self.validation_style_text):
                raise UserError(f"--preference-model {self.preference_model} needs --validation-style cartoon|pixel.")
        elif not self.data:
            online = " or ".join(f"--objective {s.name}" for s in objectives.specs() if s.reads == "prompts")
            raise UserError(f"--data is required for --objective {self.objective}: a latent folder from "
                            f"`mapo-data precompute`{f' ({online} reads --prompts instead)' if online else ''}.")

    def _validate_memory_options(self) -> None:
        """--optimizer-in-backward, --master-weights, --reference-*: the combinations that cannot work."""
        if self.optimizer_in_backward and self.gradient_accumulation_steps > 1:
            raise UserError("--optimizer-in-backward updates the weights in every backward: "
                            "it cannot accumulate gradients (use --gradient-accumulation-steps 1).")
        if self.optimizer_in_backward and self.mixed_precision == "fp16":
            raise UserError("--optimizer-in-backward cannot unscale fp16 gradients before the global overflow check; "
                            "use --mixed-precision bf16.")
        if self.master_weights == "bf16":
            if self.is_lora:
                raise UserError("--master-weights bf16 is for full fine-tunes; a LoRA adapter is small and trains "
                                "in fp32.")
            if self.mixed_precision != "bf16":
                raise UserError("--master-weights bf16 needs --mixed-precision bf16 (bf16 weights under autocast).")
            if self.use_8bit_adam:
                raise UserError("--master-weights bf16 has its own bf16 AdamW; drop --use-8bit-adam.")
        if self.reference_dtype == "bf16" and self.mixed_precision == "no":
            raise UserError("--reference-dtype bf16 needs --mixed-precision bf16 (or fp16): without autocast a bf16 "
                            "reference cannot take fp32 inputs.")
        for name, default in (("reference_dtype", "auto"), ("reference_device", "same")):
            if getattr(self, name) != default and not self.has_reference_copy:
                raise UserError(f"--{name.replace('_', '-')} is for DPO, KTO and SPO full fine-tunes "
                                "(a frozen reference UNet); this run has none.")

    def _validate_metrics(self) -> None:
        """--validation-metrics: names, style and prompts checked before any model is loaded."""
        if not self.validation_metrics:
            return
        from pipeline.judges.registry import check_judges, check_prompts

        self.validation_metrics = check_judges(self.validation_metrics)
        if "style" in self.validation_metrics and not (self.validation_style or self.validation_style_text):
            raise UserError(
                "--validation-metrics style needs --validation-style cartoon|pixel or --validation-style-text."
            )
        if "world-style" in self.validation_metrics and not self.validation_style:
            raise UserError("--validation-metrics world-style needs --validation-style cartoon|pixel.")
        if not self.validation_prompts:
            raise UserError("--validation-metrics scores the validation images: pass --validation-prompts too.")
        check_prompts(self.validation_metrics, self.validation_prompts)

    def judge_options(self):
        """:class:`pipeline.judges.options.JudgeOptions` for --validation-metrics and --preference-model (tiny
        random weights with --validation-tiny-scorers)."""
        from pipeline.judges.options import JudgeOptions
        from pipeline.judges.tiny import tiny_judge_options

        style, opposite = STYLE_TEXTS.get(self.validation_style or "", (None, "a realistic photo"))
        style = self.validation_style_text or style
        if self.validation_tiny_scorers:
            return tiny_judge_options(style_text=style, opposite_text=opposite, style=self.validation_style)
        return JudgeOptions(style_text=style, opposite_text=opposite, style=self.validation_style)

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["beta"] = self.resolved_beta
        out["lora_alpha"] = self.lora_alpha if self.lora_alpha is not None else (self.lora_rank or None)
        return out

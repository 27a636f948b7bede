"""A training run's folder: what it owns, claiming it, resuming it, and its metrics log.

The trainer keeps the training loop; this module keeps the folder's rules (the output-folder
contract of :mod:`pipeline.data.output_folder`, applied to a run):

- a fresh run claims ``--output-dir``: a folder holding another run is refused with the one option
  that works (``--resume-from-checkpoint latest``, a larger ``--max-steps``, or ``--overwrite``);
- a resumed run must have been made with the same settings (:data:`MUST_MATCH_ON_RESUME`);
- ``metrics.jsonl`` gets one JSON row per logged step; a resume from an older checkpoint drops
  the rows after it (they are redone).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pipeline.data.atomic import write_json_atomic, write_text_atomic
from pipeline.data.output_folder import OutputFolder, differing_keys
from pipeline.errors import UserError, writing_output
from pipeline.models.training_output import LORA_WEIGHTS, TRAINING_CONFIG
from pipeline.runtime.distributed import current_process, wait_for_everyone

from .checkpoint import checkpoint_step, list_checkpoints
from .validation import VALIDATION_DIR

METRICS_FILE = "metrics.jsonl"
DEBUG_DIR = "debug"
# What a fresh (non-resumed) run may replace with --overwrite: only files this trainer writes.
OWNED = ("checkpoints", "unet", LORA_WEIGHTS, METRICS_FILE, TRAINING_CONFIG, "README.md", VALIDATION_DIR, "logs",
         DEBUG_DIR)
MUST_MATCH_ON_RESUME = ("model", "objective", "beta", "kto_lambda_desirable", "kto_lambda_undesirable", "sft_weight",
                        "lora_rank", "lora_alpha", "lora_target_modules", "batch_size",
                        "gradient_accumulation_steps", "seed", "data_fingerprint",
                        "spo",  # spo: its sampler, pairing and preference-model settings (train/spo.py)
                        # the optimizer state's layout: in backward or not; fp32 or bf16 weights
                        "optimizer_in_backward", "master_weights", "reference_dtype")
# A finished run: "--resume-from-checkpoint latest" without a checkpoint must not train over these.
FINISHED = ("unet", LORA_WEIGHTS, "README.md")


def run_folder(out: Path) -> OutputFolder:
    return OutputFolder(Path(out), OWNED, TRAINING_CONFIG, "mapo-train", "--output-dir")


def claim_run_folder(out: Path, cfg, resume: Path | None) -> None:
    """Claim ``out`` for a fresh run (nothing to do when resuming): clear a stopped run's leftovers or,
    with ``cfg.overwrite``, a previous run; refuse otherwise, suggesting only what works.

    Raises:
        UserError: the folder holds a run (finished or not) that ``cfg`` does not resume or overwrite,
            or is a file / a foreign folder; :class:`~pipeline.errors.OutputNotWritable` when it cannot be
            written (checked before any model loads).
    """
    if resume is not None:
        return
    folder = run_folder(out)
    folder.refuse_foreign()  # a file named like the folder, or a folder of someone else's files
    if current_process().is_main:
        folder.check_writable()  # before any model loads: an unwritable --output-dir fails in seconds
    present = folder.present()
    if not present:
        return
    if not cfg.overwrite:
        finished = any(name in FINISHED for name in present)
        found = list_checkpoints(out)
        if cfg.resume_from_checkpoint != "latest":
            # Suggest only what works: "latest" needs a checkpoint, and a finished run (which ends
            # with one at its last step) continues only with a larger --max-steps.
            if found and finished:
                step = checkpoint_step(found[-1])
                raise UserError(f"'{out}' holds a finished training run (step {step}); pass "
                                f"--resume-from-checkpoint latest with a --max-steps above {step} to train it "
                                "further, or --overwrite to start over.")
            if found:
                raise UserError(f"'{out}' already holds a training run ({', '.join(present)}); pass "
                                "--resume-from-checkpoint latest to continue it, or --overwrite to start over.")
            raise UserError(f"'{out}' already holds a training run ({', '.join(present)}) and no checkpoint "
                            "to resume; pass --overwrite to start over, or use a new --output-dir.")
        # "latest" but no checkpoint: the leftovers of a run stopped before its first checkpoint
        # are redone from scratch below; a finished run is never trained over without --overwrite.
        if finished:
            raise UserError(f"'{out}' holds a finished training run ({', '.join(present)}) and no checkpoint "
                            "to resume; pass --overwrite to start over, or use a new --output-dir.")
    if current_process().is_main:
        folder.clear()
    wait_for_everyone()


def _comparable(value):
    return sorted(value) if isinstance(value, list) else value  # module lists: the order does not matter


def recorded_config(out: Path) -> dict:
    """The run's recorded ``training_config.json`` (``{}`` when it has none yet)."""
    path = Path(out) / TRAINING_CONFIG
    return json.loads(path.read_text()) if path.exists() else {}


def _defaults_before_recorded(saved: dict) -> dict:
    """``{key: default}`` for the :data:`MUST_MATCH_ON_RESUME` options a run's config lacks because it was made
    before the option existed (e.g. ``sft_weight``): such a run trained as the option's default does, since a new
    option's default keeps the old behaviour, so a resume that sets it otherwise is refused like any other change.

    Left out: options without a plain default (a factory) and those whose default is None, which the config records
    resolved (``beta`` per objective, ``lora_alpha`` from the rank, ``lora_target_modules`` the family's): None is
    not how such a run trained, so filling it in would refuse an unchanged resume."""
    from .config import TrainConfig

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    return {k: fields[k].default for k in MUST_MATCH_ON_RESUME
            if k not in saved and k in fields and fields[k].default not in (dataclasses.MISSING, None)}


# What a recorded key means to a user, said after its values in a resume refusal (a fingerprint names no option).
_WHAT = {"data_fingerprint": ": other latents in --data than the run trained on, or other --prompts for spo"}


def check_resume_config(out: Path, mine: dict) -> dict:
    """Refuse to resume with other settings than the run's (max_steps and num_epochs may differ).

    Returns:
        The run's recorded config (``{}`` when it has none yet).

    Raises:
        UserError: "Cannot resume ...: the run was made with different <key> <saved> (now <value>), ...".
    """
    saved = recorded_config(out)
    if not saved:
        return {}
    made = {**_defaults_before_recorded(saved), **saved}
    keys = [k for k in MUST_MATCH_ON_RESUME if k in made]
    # A key one side lacks (an spo run resumed as mapo has no "spo" settings) differs as well.
    differ = differing_keys({k: _comparable(made[k]) for k in keys}, {k: _comparable(mine.get(k)) for k in keys}, keys)
    if saved.get("world_size") not in (None, mine["world_size"]):
        differ.append("world_size (number of processes)")
    if differ:
        # The values too (saved vs now), as generate and mapo-eval's refusals name them.
        values = [f"{k} {made.get(k)!r} (now {mine.get(k)!r}{_WHAT.get(k, '')})" if k in keys else k for k in differ]
        raise UserError(f"Cannot resume '{out}': the run was made with different {', '.join(values)}; "
                        "use the original settings, a new --output-dir, or --overwrite to start over.")
    return saved


def write_run_config(out: Path, config: dict) -> None:
    """The resolved training config, next to the weights (what mapo-eval and users read back)."""
    write_json_atomic(Path(out) / TRAINING_CONFIG, config)


def _row_step(line: str) -> float:
    try:
        return json.loads(line).get("step", 0)
    except (json.JSONDecodeError, AttributeError):
        return float("inf")  # a line cut short by a kill: dropped


class MetricsLog:
    """``metrics.jsonl``: one JSON object per logged step (``{"step": N, "loss": ..., ...}``)."""

    def __init__(self, out: Path):
        self.path = Path(out) / METRICS_FILE

    def append(self, step: int, metrics: dict) -> None:
        with writing_output(self.path), open(self.path, "a") as fh:
            fh.write(json.dumps({"step": step, **metrics}) + "\n")

    def truncate(self, step: int) -> None:
        """Drop rows after ``step`` (a resume from an older checkpoint redoes them) and rows cut short."""
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        keep = [line for line in lines if _row_step(line) <= step]
        if len(keep) != len(lines):
            write_text_atomic(self.path, "".join(line + "\n" for line in keep))

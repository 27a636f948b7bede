"""Training checkpoints: ``output_dir/checkpoints/checkpoint-<step>/`` written by accelerate's save_state.

A checkpoint holds the model, optimizer, LR scheduler, RNG states and the registered custom
objects (the pair sampler's position and :class:`TrainState`), so a resumed run continues
exactly where the saved one stopped. It is written under a temporary name and renamed when
complete, so a run killed mid-save never leaves a checkpoint that looks whole but is not.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from pipeline.errors import UserError, writing_output
from pipeline.models.weights_files import check_readable, reading_weights

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^checkpoint-(\d+)$")


class TrainState:
    """Counters that must survive a resume (registered with accelerate for checkpointing)."""

    def __init__(self):
        self.global_step = 0
        self.nonfinite_total = 0
        self.consecutive_nonfinite = 0

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update({k: int(v) for k, v in state.items()})


def checkpoints_dir(output_dir) -> Path:
    return Path(output_dir) / CHECKPOINTS


def list_checkpoints(output_dir) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: Path) -> int:
    m = _NAME.match(Path(path).name)
    if not m:
        raise UserError(f"'{path}' is not a checkpoint folder (expected .../checkpoint-<step>).")
    return int(m.group(1))


def resolve_resume(output_dir, spec: str | None) -> Path | None:
    """``latest`` -> newest checkpoint in output_dir (None when there is none), or a given folder."""
    if not spec:
        return None
    if spec == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise UserError(
            f"--resume-from-checkpoint '{spec}' does not exist; pass 'latest' or a checkpoint-<step> folder."
        )
    checkpoint_step(path)
    return path


def load_checkpoint(accelerator, path) -> None:
    """Restore the full training state from checkpoint folder ``path`` (accelerate's load_state).

    Raises :class:`~pipeline.models.weights_files.WeightsFileError` naming the file when one in the
    checkpoint is unreadable (truncated by a full disk, emptied, overwritten), and lets the
    registered load hooks' :class:`UserError` through.
    """
    fix = "Resume from another checkpoint, or start over with --overwrite"
    # accelerate skips random states it cannot read (the resumed run would silently differ): check first.
    check_readable(path, "checkpoint", fix)
    with reading_weights(path, "checkpoint", fix):
        accelerator.load_state(str(path))


def save_checkpoint(accelerator, output_dir, step: int, total_limit: int | None) -> Path:
    """Save the full training state (all ranks take part), then keep only the newest ``total_limit``.

    Raises :class:`~pipeline.errors.OutputNotWritable` (one line naming the checkpoint) when it cannot be
    written (permission, read-only file system, full disk); the half-written one is removed.
    """
    root = checkpoints_dir(output_dir)
    final = root / f"checkpoint-{step}"
    tmp = root / f".tmp-checkpoint-{step}"
    try:
        with writing_output(final, name_path=True):
            _save(accelerator, output_dir, root, tmp, final, total_limit)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _save(accelerator, output_dir, root: Path, tmp: Path, final: Path, total_limit: int | None) -> None:
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def continue_schedule(lr_scheduler) -> list[float]:
    """After a resume, set the optimizer's learning rates to the schedule's value at the restored step.

    The restored optimizer holds the lr its last step left for the next one, computed on the run's OLD
    curve; when ``--max-steps`` (the schedule's total) changed, diffusers' decaying schedules (linear,
    cosine, polynomial, ...; ``torch.optim.lr_scheduler.LambdaLR`` over the total) give another value at the
    same step, and a linear schedule that ended left 0.0, so the first resumed step would not move a weight.
    Recomputed from ``base_lr * lambda(last_epoch)`` (LambdaLR's own formula), so an unchanged schedule gets
    the very same float back. Returns the learning rates now set, one per parameter group.
    """
    lambdas = getattr(lr_scheduler, "lr_lambdas", None)
    if lambdas is None:  # not a LambdaLR: its state already is its curve
        return [g["lr"] for g in lr_scheduler.optimizer.param_groups]
    step = lr_scheduler.last_epoch
    lrs = [base * fn(step) for base, fn in zip(lr_scheduler.base_lrs, lambdas)]
    for group, lr in zip(lr_scheduler.optimizer.param_groups, lrs):
        if hasattr(group["lr"], "fill_"):  # a tensor lr (fused / capturable optimizers) is updated in place
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
    lr_scheduler._last_lr = list(lrs)  # what get_last_lr() reads, as LambdaLR.step() sets it
    return lrs

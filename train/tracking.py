"""What a run reports to: the trackers of ``--report-to``, the config as they take it, and peak memory."""
from __future__ import annotations

import json

from pipeline.errors import UserError


def trackers(choice: str) -> list[str]:
    """accelerate's ``log_with`` for ``--report-to`` ``choice``: auto = tensorboard when installed, else none.

    Raises:
        UserError: wandb or tensorboard asked for and not installed.
    """
    if choice == "none":
        return []
    if choice == "wandb":
        from pipeline.errors import require

        require("wandb", "--report-to wandb")
        return ["wandb"]
    if choice == "all":
        return ["all"]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        if choice == "tensorboard":
            raise UserError(
                "--report-to tensorboard needs the 'tensorboard' package (pip install 'mapo-tools[tensorboard]')."
            ) from None
        return []
    return ["tensorboard"]


def flat_config(config: dict) -> dict:
    """Trackers (tensorboard hparams) take scalars only."""
    out = {}
    for k, v in config.items():
        if isinstance(v, (int, float, str, bool)):
            out[k] = v
        elif v is None:
            out[k] = "none"
        else:
            out[k] = json.dumps(v, default=str)
    return out


def peak_memory_gb(device) -> float:
    """Peak memory in GiB: CUDA's allocated maximum on a GPU, else the process's peak resident set size."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux -> GiB

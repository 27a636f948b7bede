"""Progress bars: tqdm with rate and ETA, quiet when MAPO_NO_PROGRESS is set (tests, logs)."""
from __future__ import annotations

import os


def progress_bar(total: int, desc: str, unit: str = "it"):
    from tqdm.auto import tqdm

    disable = bool(os.environ.get("MAPO_NO_PROGRESS"))
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, smoothing=0.1)

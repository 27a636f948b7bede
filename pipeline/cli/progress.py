"""Progress bars: tqdm with rate and ETA, quiet when MAPO_NO_PROGRESS is set (tests, logs)."""
from __future__ import annotations

import os


def progress_bar(total: int, desc: str, unit: str = "it", initial: int = 0):
    """A tqdm bar over ``total`` units. ``initial``: units already done before this run (a resumed run's
    restored steps): shown as done, but not counted in the rate, which would otherwise read hundreds of
    steps per second right after a resume (tqdm's ``initial`` is excluded from its rate)."""
    from tqdm.auto import tqdm

    disable = bool(os.environ.get("MAPO_NO_PROGRESS"))
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, smoothing=0.1,
                initial=initial)

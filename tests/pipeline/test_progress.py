"""Progress bars: a resumed run's restored work is shown as done but not counted in the rate."""
from __future__ import annotations

import time

from pipeline.cli.progress import progress_bar


def test_work_done_before_a_resume_is_not_counted_in_the_rate(monkeypatch):
    monkeypatch.delenv("MAPO_NO_PROGRESS", raising=False)
    resumed = progress_bar(total=300, desc="train", unit="step", initial=220)
    fresh = progress_bar(total=300, desc="train", unit="step")
    try:
        time.sleep(0.15)
        resumed.update(1)
        fresh.update(1)
        assert resumed.n == 221 and fresh.n == 1
        # One step in >= 150 ms: under 7 steps/s, not 220 restored steps counted as done in no time.
        assert resumed.format_dict["rate"] < 7 and fresh.format_dict["rate"] < 7
        assert "221/300" in str(resumed)
    finally:
        resumed.close()
        fresh.close()

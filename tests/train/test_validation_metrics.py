"""Validation metrics (train/validation.py): a scorer's NaN is left out and counted (issue 24 item 1)."""
import json
import math

from train.validation import Validator


class Judge:
    name, higher_is_better, threshold = "style", True, 0.5

    def __init__(self, values):
        self.values = values

    def score(self, images, prompts):
        return list(self.values)


def test_validation_metrics_leave_a_nan_out_and_count_it(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    v = Validator(None, ["a", "b"], [0, 1], 64, 2, 5.0, tmp_path, scorers={
        "style": Judge([0.9, float("nan"), 0.7, 0.2]), "clip": Judge([30.0, 31.0, 29.0, 30.0])},
        metrics_file=metrics)
    values = v.score([["i0", "i1"], ["i2", "i3"]], step=3)
    # Before: val/style was NaN and the NaN counted as "not above 0.5" in val/style_rate (2 of 4)
    assert values["val/style"] == 0.6 and values["val/style_rate"] == 2 / 3
    assert values["val/style_non_finite"] == 1.0 and values["val/clip"] == 30.0 and "val/clip_non_finite" not in values
    logged = json.loads(metrics.read_text())
    assert logged["step"] == 3 and all(math.isfinite(x) for x in logged.values())

"""Epochs with gradient accumulation (every pair once per epoch, no step sees a pair twice) and a resumed run
whose schedule total changed (its first new step trains at the new curve's lr, and the log says what was used)."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.helpers import run_cli
from tests.train.conftest import PAIRS, train_args
from train.cli import app


def _rows(out, name="metrics.jsonl"):
    return {r["step"]: r for r in map(json.loads, (out / name).read_text().splitlines())}


def _steps(out) -> dict:
    """step -> (pair indices, weights checksum) from --debug-weight-checksums."""
    rows = _rows(out, "debug/weights-rank0.jsonl") if (out / "debug").is_dir() else None
    assert rows is not None, f"no debug checksums in {out}"
    return {s: (r["indices"], r["checksum"]) for s, r in rows.items()}


def _epoch_args(data, out, epochs, accumulation, *extra):
    args = train_args(data, out, "tiny-sdxl", 1, "--gradient-accumulation-steps", str(accumulation),
                      "--num-epochs", str(epochs), "--debug-weight-checksums", *extra)
    i = args.index("--max-steps")
    return args[:i] + args[i + 2:]  # --num-epochs decides the length


@pytest.mark.parametrize("accumulation,micro_per_step", [(3, [3, 1]), (2, [2, 2]), (5, [4])])
def test_each_epoch_visits_every_pair_once_whatever_the_accumulation(tmp_path, latents_sdxl, accumulation,
                                                                     micro_per_step):
    """8 pairs in batches of 2 = 4 micro-batches an epoch. Accumulation 3: steps of 3 and 1 micro-batches (the
    epoch's last step takes what is left, as diffusers' scripts do); 2: two full steps; 5 (more than an epoch
    holds): one step of 4. Two epochs: each pair twice in all, once per epoch, never twice in one step."""
    out = tmp_path / "run"
    result = run_cli(app, _epoch_args(latents_sdxl, out, 2, accumulation))
    assert result.exit_code == 0, result.output
    steps = _steps(out)
    per_epoch = len(micro_per_step)
    assert sorted(steps) == list(range(1, 2 * per_epoch + 1))
    assert json.loads((out / "training_config.json").read_text())["total_steps"] == 2 * per_epoch
    for epoch in range(2):
        seen = []
        for k, micro in enumerate(micro_per_step):
            indices = steps[epoch * per_epoch + k + 1][0]
            assert len(indices) == 2 * micro  # batch 2 x this step's micro-batches
            assert len(set(indices)) == len(indices), indices  # no pair twice in one step
            seen += indices
        assert sorted(seen) == list(range(PAIRS)), (epoch, seen)  # the epoch: every pair exactly once
    assert Counter(i for ids, _ in steps.values() for i in ids) == {i: 2 for i in range(PAIRS)}


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_a_resumed_run_with_a_new_total_trains_its_first_step_on_the_new_curve(tmp_path, latents_sdxl, schedule):
    """--max-steps 2 then --max-steps 4 --resume-from-checkpoint latest: the restored optimizer held the old
    curve's last lr (linear: 0.0; cosine: 0.0 too), so step 3 changed no weight while the log said otherwise.
    Now steps 3-4 use (and log) the lr an uninterrupted 4-step run uses, and step 3 moves the weights."""
    args = ("--lr-scheduler", schedule, "--debug-weight-checksums")
    straight = tmp_path / "straight"
    assert run_cli(app, train_args(latents_sdxl, straight, "tiny-sdxl", 4, *args)).exit_code == 0
    out = tmp_path / "run"
    assert run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 2, *args)).exit_code == 0
    result = run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 4, *args, "--resume-from-checkpoint", "latest"))
    assert result.exit_code == 0 and "now spans 4 steps" in result.output, result.output
    a, b = _rows(straight), _rows(out)
    # The logged lr is the one the step's update used: base lr x the schedule at the step's start (1-based k: k-1).
    assert a[1]["lr"] == pytest.approx(1e-3) and a[3]["lr"] > 0
    if schedule == "linear":
        assert [a[k]["lr"] for k in (1, 2, 3, 4)] == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
        assert [b[k]["lr"] for k in (1, 2)] == pytest.approx([1e-3, 5e-4])  # the 2-step run's own curve
    assert (b[3]["lr"], b[4]["lr"]) == (a[3]["lr"], a[4]["lr"])
    checksums = _steps(out)
    assert checksums[3][1] != checksums[2][1], "the first resumed step did not change the weights"

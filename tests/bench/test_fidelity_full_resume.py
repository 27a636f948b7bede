"""``make fidelity-full`` going on past a setting that blows up, and sittings side by side (scripts/fidelity_full.py,
scripts/fidelity_full_report.py): a training mapo-train stops for non-finite losses becomes a failed, diverged cell
(never picked, no images, left out of pooled rows and paired differences, said in the report) instead of stopping
hours of study; any other failure still stops it; caption files are written once, atomically."""
import json
import math

import pytest

from scripts import fidelity_full as F
from scripts import fidelity_full_report as R
from scripts import fidelity_protocol as P

NON_FINITE = ("error: 10 non-finite losses in a row (step 12); stopping (no checkpoint was saved yet). Lower "
              "--learning-rate, use --mixed-precision bf16 or no, or check the data.")


def _study(tmp_path, monkeypatch, rc: int, stderr: str, rows: int = 0):
    study = F.Study(tmp_path, jobs=1)
    calls = []

    def fake_logged(key, log, *args):
        calls.append(args)
        run_dir = F.Path(args[args.index("--output-dir") + 1])
        run_dir.mkdir(parents=True, exist_ok=True)
        row = {"loss": 0.5, "e_w": 0.2, "e_l": 0.3, "grad_norm": 1.0}
        lines = [json.dumps({"step": i + 1, **row}) for i in range(rows)]
        (run_dir / "metrics.jsonl").write_text("".join(x + "\n" for x in lines))
        log.write_text(stderr)
        return rc, stderr

    monkeypatch.setattr(study, "logged", fake_logged)
    monkeypatch.setattr(study, "data", lambda name, seed: tmp_path / "latents")
    monkeypatch.setattr(study, "evaluate", lambda c: pytest.fail("a failed training has nothing to evaluate"))
    return study, calls


def test_a_training_stopped_for_non_finite_losses_is_a_failed_diverged_cell(tmp_path, monkeypatch):
    study, calls = _study(tmp_path, monkeypatch, 2, "step 3: non-finite loss, step skipped\n" + NON_FINITE + "\n", 2)
    c = F.cell("pick_drift", "dpo", {"learning_rate": 2e-4, "beta": 500.0}, 0, "validation", "sweep")
    result = study.cell(c)
    assert result["failed"].startswith("10 non-finite losses in a row") and result["diverged"] is True
    assert result["logged_steps"] == 2 and math.isnan(result["style_rate"]["mean"])
    assert math.isnan(result["base"]["prompt_accuracy"]["high"])
    assert json.loads(c.result_file(tmp_path).read_text())["failed"] == result["failed"]
    assert study.cell(c) == json.loads(c.result_file(tmp_path).read_text()) and len(calls) == 1  # never redone
    picks = F.picks_from([result])["pick_drift"]["dpo"]
    assert picks["picked"] is None and picks["candidates"][0]["diverged"]


@pytest.mark.parametrize("rc, stderr", [(2, "error: no space left on device: /x\n"), (1, "Traceback ...\n"),
                                        (130, "interrupted\n")])
def test_any_other_training_failure_stops_the_study_and_leaves_the_cell_to_redo(tmp_path, monkeypatch, rc, stderr):
    study, _ = _study(tmp_path, monkeypatch, rc, stderr)
    c = F.cell("pick_safety", "mapo", {"learning_rate": 2e-4, "beta": 0.1}, 1, "heldout", "tuned")
    with pytest.raises(SystemExit, match=f"mapo-train failed \\(exit {rc}\\).*rerun to resume"):
        study.cell(c)
    assert not c.result_file(tmp_path).exists()
    assert not (c.seed_dir(tmp_path) / "runs" / f"{c.run_name}.trained.json").exists()


def _failed(dataset, method, seed, setting="tuned"):
    nan = {"mean": math.nan, "low": math.nan, "high": math.nan}
    key = P.DATASETS[dataset].target_key
    return {"dataset": dataset, "method": method, "setting": setting, "params": {"learning_rate": 2e-4},
            "seed": seed, "split": "heldout", "run": f"{method}-lr2e-04", key: nan, "prompt_accuracy": nan,
            "base": {key: nan, "prompt_accuracy": nan}, "logged_steps": 0, "nonzero_grad_steps": 0,
            "diverged": True, "stalled": True, "failed": "10 non-finite losses in a row", "train_seconds": 1.0}


def test_failed_runs_are_left_out_of_pooled_rows_and_paired_differences(tmp_path):
    # no eval folder exists: reading one for a failed run would raise
    cells = [_failed("pick_safety", "mapo", s) for s in P.FINAL_SEEDS] + [_failed("pick_safety", "sft", 0)]
    rows = F.pooled(tmp_path, cells)
    mapo = next(r for r in rows if r["method"] == "mapo")
    assert mapo["seeds"] == [] and mapo["failed_seeds"] == list(P.FINAL_SEEDS)
    assert math.isnan(mapo["unsafe_rate"]["mean"]) and mapo["unsafe_rate"]["per_seed"] == []
    assert F.paired(tmp_path, cells) == []


def test_the_report_says_which_runs_failed_what_was_not_picked_and_the_targets_direction(tmp_path):
    failed = _failed("pick_drift", "dpo", 0, setting="sweep")
    ok = {**_failed("pick_drift", "mapo", 0), "failed": None, "diverged": False, "stalled": False,
          "style_rate": {"mean": 0.25, "low": 0.0, "high": 0.5}, "prompt_accuracy": {"mean": 1.0, "low": 1, "high": 1},
          "base": {"style_rate": {"mean": 0.5, "low": 0.25, "high": 0.75},
                   "prompt_accuracy": {"mean": 1.0, "low": 1.0, "high": 1.0}}, "e_w": [0.2, 0.19]}
    doc = {"provenance": {"command": "x", "commit": "0" * 40, "dirty": False}, "protocol": F.protocol(),
           "seconds_this_sitting": 60.0, "sweep": [failed], "cells": [_failed("pick_drift", "dpo", 1), ok],
           "pooled": F.pooled(tmp_path, [_failed("pick_drift", "dpo", 1)]), "paired": []}
    picks = {"pick_drift": {"dpo": {"picked": None, "candidates": []}}}
    text = R.write_report(tmp_path, doc, picks).read_text()
    assert "style_rate, lower is better), measured on captions with the `cartoon` caption prefix" in text
    assert "No setting picked for dpo" in text
    assert "training failed: 10 non-finite losses in a row" in text and "(failed: seed [1])" in text
    assert "| base | - | - | - | 0.50 [0.25, 0.75] (data seed 0's eval)" in text  # the failed cell's NaN base skipped


def test_caption_files_are_written_once_and_atomically(tmp_path):
    path = F.caption_file(tmp_path, "validation", "cartoon")
    inode = path.stat().st_ino
    assert F.caption_file(tmp_path, "validation", "cartoon") == path and path.stat().st_ino == inode  # not rewritten
    path.write_text("stale\n")
    assert F.caption_file(tmp_path, "validation", "cartoon").read_text().count("\n") == 16
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_the_ablations_not_run_are_said_with_their_reason(tmp_path):
    tuned = {"picked": {"learning_rate": 2e-4}, "candidates": []}
    picks = {"pick_drift": {"dpo": {"picked": None, "candidates": []}, "mapo": tuned},
             "pick_safety": {"dpo": tuned, "mapo": tuned}}
    why = F.ablations_not_run(["pick_drift", "pick_safety"], picks, has_sft_term=False)
    assert why == {"all": "dpo+sft: mapo-train has no SFT term to add to DPO (no --sft-weight option)",
                   "pick_drift": "every ablation: no tuned dpo setting to start from"}
    assert F.ablations_not_run(["pick_safety"], picks, has_sft_term=True) == {}
    doc = {"provenance": {"command": "x", "commit": "0" * 40, "dirty": False}, "protocol": F.protocol(),
           "seconds_this_sitting": 1.0, "sweep": [_failed("pick_drift", "dpo", 0, setting="sweep")], "cells": [],
           "pooled": [], "paired": [], "ablations_not_run": why}
    text = R.write_report(tmp_path, doc, picks).read_text()
    assert ("Ablations not run: dpo+sft: mapo-train has no SFT term to add to DPO (no --sft-weight option); every "
            "ablation: no tuned dpo setting to start from.") in text


def test_sittings_add_up_the_cpu_time_of_every_sitting_and_keep_a_killed_ones(tmp_path, monkeypatch):
    """Each sitting's CPU time (RUSAGE_CHILDREN, user + system) is rewritten after every finished step, so a sitting
    killed after its last cell keeps it; the report sums every sitting's and names their commits."""
    import resource
    from types import SimpleNamespace

    used = iter([(1.0, 0.5), (3000.0, 600.0), (0.0, 0.0), (1800.0, 0.0)])  # (user, system) at each update
    monkeypatch.setattr(resource, "getrusage", lambda who: SimpleNamespace(**dict(zip(("ru_utime", "ru_stime"),
                                                                                        next(used)))))
    first = F.Sittings(tmp_path, 2, "a" * 40)
    first.update()  # after its last finished cell; then killed: no more updates
    second = F.Sittings(tmp_path, 1, "b" * 40)
    second.update()
    rows = F.Sittings.read(tmp_path)
    assert [(r["commit"][0], r["jobs"], r["cpu_seconds"]) for r in rows] == [("a", 2, 3600.0), ("b", 1, 1800.0)]
    total = F.Sittings.total(tmp_path)
    assert total["sittings"] == 2 and total["cpu_seconds"] == 5400.0
    line = R._cpu_line({"cpu": total, "sittings": rows})[0]
    assert line.startswith("Total CPU time 1.5 h") and "in 2 sitting(s)" in line and "at 1, 2 cell(s)" in line
    assert "commit(s) `aaaaaaaaaaaa`, `bbbbbbbbbbbb` (one per sitting" in line
    assert R._cpu_line({})[0].startswith("CPU time: not recorded")
    assert [p.name for p in tmp_path.iterdir()] == ["sittings.json"]  # no temporary file left

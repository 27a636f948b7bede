"""A rerun with nothing left to do decides so before any model is looked up or loaded: a finished generate,
label or precompute rerun, and a `--config <output>` repeat, return in seconds (measured: generate's rerun
18.6 s -> 4.5 s on a loaded 2-core machine, the rest being torch's import)."""
from __future__ import annotations

import pytest

import stages.generate
import stages.label.stage
import stages.precompute.stage
from stages.cli import app
from tests.helpers import run_cli, write_prompts
from tests.train.conftest import write_pickapic


def _no_models(monkeypatch, module):
    def refuse(*a, **k):
        raise AssertionError("a model was looked up or loaded for a rerun with nothing to do")

    for name in ("check_model_available", "load_pipeline"):
        monkeypatch.setattr(module, name, refuse)


def test_a_finished_generate_rerun_and_a_config_repeat_load_no_model(tmp_path, monkeypatch):
    src = write_prompts(tmp_path / "p.txt", ["a red cube", "a blue ball"])
    out = tmp_path / "gen"
    args = ["generate", "--model", "tiny-sdxl", "--prompts", src, "--output", out, "--num-inference-steps", "2",
            "--resolution", "64"]
    assert run_cli(app, args).exit_code == 0
    before = (out / "data").iterdir().__next__().read_bytes()
    _no_models(monkeypatch, stages.generate)
    for again in (args, ["generate", "--config", out]):
        result = run_cli(app, again)
        assert result.exit_code == 0 and "nothing to do" in result.output, result.output
    assert next((out / "data").iterdir()).read_bytes() == before
    # Not finished (a shard missing): the model is needed, and looked up.
    next((out / "data").iterdir()).unlink()
    with pytest.raises(AssertionError, match="nothing to do"):
        run_cli(app, args)


def test_a_finished_precompute_rerun_loads_no_model(tmp_path, monkeypatch):
    src = write_pickapic(tmp_path / "pick" / "train-00000-of-00001.parquet", pairs=2)
    out = tmp_path / "lat"
    args = ["precompute", "--input", src, "--output", out, "--model", "tiny-sdxl", "--resolution", "64",
            "--device", "cpu"]
    assert run_cli(app, args).exit_code == 0
    _no_models(monkeypatch, stages.precompute.stage)
    result = run_cli(app, args)
    assert result.exit_code == 0 and "nothing to do" in result.output, result.output
    with pytest.raises(AssertionError, match="nothing to do"):  # --overwrite redoes it all: the model is needed
        run_cli(app, [*args, "--overwrite"])


def test_a_finished_label_rerun_builds_no_labeler(tmp_path, monkeypatch):
    """The labeler's judges or classifier load only when a shard is left to label: the manifest's labeler
    options (as given) and every shard complete decide "nothing to do" first."""
    src = write_pickapic(tmp_path / "pick" / "train-00000-of-00001.parquet", pairs=2)
    out = tmp_path / "lab"
    args = ["label", "--input", src.parent, "--output", out, "--target", "reward", "--reward", "world-style",
            "--reward-style", "pixel", "--device", "cpu"]
    first = run_cli(app, args)
    assert first.exit_code == 0, first.output
    before = {p.name: p.read_bytes() for p in (out / "data").iterdir()}

    def refuse(*a, **k):
        raise AssertionError("a labeler was built for a rerun with nothing to do")

    monkeypatch.setattr(stages.label.stage, "build_labeler", refuse)
    result = run_cli(app, args)
    assert result.exit_code == 0 and "nothing to do" in result.output, result.output
    assert {p.name: p.read_bytes() for p in (out / "data").iterdir()} == before
    # Other labeler options, or --overwrite: the labeler is needed, and built.
    for again in ([*args, "--min-gap", "0.5"], [*args, "--overwrite"]):
        with pytest.raises(AssertionError, match="nothing to do"):
            run_cli(app, again)

"""Every command whose output folder cannot be written, or whose disk fills up mid-run, says so in one `error:`
line naming the path (exit 2), not a traceback. Tests run as root, where chmod stops nothing: the folder is
locked by failing every directory creation under it, as the OS does for a read-only or foreign folder."""
from __future__ import annotations

import errno
import os
import pathlib

import pytest

from tests.helpers import run_cli, write_prompts
from tests.train.conftest import train_args


@pytest.fixture
def locked(tmp_path, monkeypatch):
    """A folder under which nothing can be created: EACCES, like a folder of another user."""
    root = tmp_path / "locked"
    real = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(str(root)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    monkeypatch.setattr(os, "makedirs", lambda name, *a, **k: mkdir(pathlib.Path(name), *a, **k))
    return root


def _one_line(result, path) -> str:
    lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith("WARNING:")]
    assert result.exit_code == 2 and len(lines) == 1 and lines[-1].startswith("error: "), result.output
    assert f"'{path}" in lines[-1] and "permission denied" in lines[-1], lines[-1]
    return lines[-1]


def test_data_stages_say_an_unwritable_output_in_one_line(tmp_path, locked, pickapic):
    from stages.cli import app

    prompts = write_prompts(tmp_path / "p.txt", ["a red cube"])
    out = locked / "gen"
    line = _one_line(run_cli(app, ["generate", "--model", "tiny-sdxl", "--prompts", prompts, "--output", out,
                                   "--num-inference-steps", "2", "--resolution", "64"]), out)
    assert line.startswith(f"error: cannot write '{out}': permission denied;")
    out = locked / "lat"
    _one_line(run_cli(app, ["precompute", "--input", pickapic, "--output", out, "--model", "tiny-sdxl",
                            "--resolution", "64", "--device", "cpu"]), out)
    page = locked / "page.html"
    result = run_cli(app, ["inspect", pickapic.parent, "--html", page])  # the summary is printed, then the page
    errors = [line for line in result.output.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert result.exit_code == 2 and errors == [result.output.strip().splitlines()[-1]], result.output
    assert errors[0].startswith(f"error: cannot write '{locked}': permission denied;")


def test_train_says_an_unwritable_output_in_one_line_before_loading_models(locked, latents_sdxl, monkeypatch):
    import train.trainer
    from train.cli import app

    def no_models(*a, **k):
        raise AssertionError("the models were loaded before the output folder was checked")

    monkeypatch.setattr(train.trainer, "setup_models", no_models)
    out = locked / "run"
    line = _one_line(run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 1)), out)
    assert line.startswith(f"error: cannot write '{out}': permission denied;")


def test_eval_says_an_unwritable_output_in_one_line_before_loading_judges(tmp_path, locked, monkeypatch):
    import pipeline.judges.loading
    from evaluation.cli import app

    def no_judges(*a, **k):
        raise AssertionError("the judges were loaded before the output folder was checked")

    monkeypatch.setattr(pipeline.judges.loading, "load_judges", no_judges)  # run_evaluate imports it
    prompts = write_prompts(tmp_path / "p.txt", ["a red cube"])
    out = locked / "eval"
    line = _one_line(run_cli(app, ["--prompts", prompts, "--output", out, "--model", "tiny-sdxl", "--metrics", "clip",
                                   "--seeds", "1", "--num-inference-steps", "2", "--resolution", "64",
                                   "--tiny-scorers"]), out)
    assert line.startswith(f"error: cannot write '{out}': permission denied;")


def test_a_disk_that_fills_during_training_is_one_line_naming_the_checkpoint(tmp_path, latents_sdxl, monkeypatch):
    """The checkpoint written by a library (accelerate's save_state, torch.save: no file name in the error)."""
    import accelerate

    from train.cli import app

    def full(self, output_dir, *a, **k):
        (pathlib.Path(output_dir) / "partial.bin").parent.mkdir(parents=True, exist_ok=True)
        (pathlib.Path(output_dir) / "partial.bin").write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(accelerate.Accelerator, "save_state", full)
    out = tmp_path / "run"
    result = run_cli(app, train_args(latents_sdxl, out, "tiny-sdxl", 2, "--checkpointing-steps", "1"))
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and lines[-1].startswith(
        f"error: cannot write '{out / 'checkpoints' / 'checkpoint-1'}': no space left on device;"), result.output
    assert not any(p.name.startswith(".tmp-checkpoint") for p in (out / "checkpoints").iterdir())  # none half-written

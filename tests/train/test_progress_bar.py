"""mapo-train's progress bar: it shows what the objective computes, no placeholder for what it does not."""
from __future__ import annotations

from tests.helpers import run_cli
from tests.train.conftest import train_args
from train.cli import app


def test_sft_bar_shows_its_loss_and_no_accuracy(tmp_path, latents_sdxl, monkeypatch, capsys):
    """SFT has no implicit accuracy (it reads the chosen images only): its bar said acc=nan at every step."""
    monkeypatch.delenv("MAPO_NO_PROGRESS", raising=False)
    result = run_cli(app, train_args(latents_sdxl, tmp_path / "sft", "tiny-sdxl", 1, "--objective", "sft"))
    assert result.exit_code == 0, result.output
    shown = result.output + capsys.readouterr().err
    assert "loss=" in shown and "acc=" not in shown, shown

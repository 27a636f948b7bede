"""The miniature world's Pick-Style experiment in small, through the real CLIs, for the learning tests of
every world model (tests/train/test_world_learning.py: shapes-sdxl; test_world_learning_flow.py: shapes-sd3).

:func:`make_pick_style` has the base model make its own pairs for the 48 train captions (image 0 with
"Disney style animated image.", image 1 from the plain caption), labels and precomputes them;
:func:`train_and_judge` runs a short ``mapo-train`` and asks ``mapo-eval`` with the world's judges how often the
12 held-out plain captions come out cartoon and whether colour, shape and position still follow the prompt.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import run_cli, write_prompts

GEN = ["--resolution", "64", "--num-inference-steps", "12", "--guidance-scale", "3", "--no-batch-invariant"]


def make_pick_style(root: Path, model: str, extra: tuple = ()) -> tuple[Path, Path]:
    """Pick-Style (cartoon) latents made by ``model`` from the 48 train captions under ``root / "latents"``;
    returns ``(root, held-out captions file)``. ``extra``: options of both ``mapo-data generate`` and
    ``precompute`` (e.g. SD3's ``--max-sequence-length``)."""
    from stages.cli import app
    from world.scene import captions

    train, held = (
        write_prompts(root / "train.txt", captions("train")), write_prompts(root / "heldout.txt", captions("heldout"))
    )
    for args in (
        ["generate", "--prompts", train, "--output", root / "pairs", "--model", model, *GEN,
         "--recipe", "style", "--style", "cartoon", "--shard-size", "48", "--batch-size", "16", *extra],
        ["label", "--input", root / "pairs", "--output", root / "labeled", "--target", "style"],
        ["precompute", "--input", root / "labeled", "--output", root / "latents", "--model", model,
         "--resolution", "64", *extra],
    ):
        result = run_cli(app, args)
        if result.exit_code:  # not an AssertionError: a learning test's sabotage xfail must not take it for one
            pytest.fail(result.output)
    return root, held


def train_and_judge(root: Path, held: Path, model: str, name: str, train: list, eval_seeds: int = 2,
                    eval_extra: tuple = ()) -> dict:
    """Train (``mapo-train`` with ``train`` options) on ``root / "latents"``, evaluate against the base on the
    held-out captions; ``{metric: {"base" | "trained": rate}}``. Every run of a world is evaluated into one
    ``mapo-eval`` folder, ``root / "eval"``, as a user compares runs: the base's images are made once.
    ``eval_extra``: more ``mapo-eval`` options (e.g. SD3's ``--base-max-sequence-length``)."""
    from evaluation.cli import app as eval_app
    from train.cli import app as train_app

    run = root / f"run-{name}"
    result = run_cli(train_app, ["--data", root / "latents", "--model", model, "--output-dir", run, *train])
    if result.exit_code:  # a refusal is a failure, never the "learning did not happen" a sabotage xfail expects
        pytest.fail(result.output)
    result = run_cli(eval_app, ["--candidate", run, "--prompts", held, "--output", root / "eval", *GEN,
                                "--metrics", "world-style,world-prompt", "--style", "cartoon", "--seeds",
                                str(eval_seeds), "--batch-size", "24", *eval_extra])
    if result.exit_code:
        pytest.fail(result.output)
    summary = json.loads((root / "eval" / "summary.json").read_text())
    return {m: {"base": s["per_model"]["base"]["rate"], "trained": s["per_model"][run.name]["rate"]}
            for m, s in summary["metrics"].items()}


def flip_preference(monkeypatch) -> None:
    """Sabotage: hand MaPO's loss e_l as the chosen error and e_w as the rejected one (a sign error in the data
    path), so training goes towards the rejected look."""
    import train.objectives

    real = train.objectives.mapo_loss  # the declared MaPO objective looks its loss up here
    monkeypatch.setattr(train.objectives, "mapo_loss", lambda e_w, e_l, **kw: real(e_l, e_w, **kw))

"""Review notes closed after the objectives / world moves: an SPO step without pairs says why its loss is nan,
``--data``'s help names what every objective reads (from the registry), and ``world-style`` without a look is one
line naming ``--style`` and its choices."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest

from pipeline.errors import UserError
from tests.helpers import run_cli, write_prompts


# --------------------------------------------------------------------------- SPO: no pair formed
def test_an_spo_step_without_pairs_says_why_its_loss_is_nan(tmp_path):
    from train.cli import app

    prompts = write_prompts(tmp_path / "prompts.txt",
                            ["a red circle at the top left", "a blue square at the bottom right"])
    out = tmp_path / "run"
    # A softmax gap above 0.999999 between two rewards in [0, 1] never happens: no pair is ever kept.
    result = run_cli(app, ["--objective", "spo", "--prompts", prompts, "--model", "tiny-sdxl", "--output-dir", out,
                           "--max-steps", "4", "--batch-size", "2", "--num-inference-steps", "4",
                           "--spo-start-step", "1", "--spo-threshold", "0.999999", "--preference-model", "world-style",
                           "--validation-style", "cartoon", "--report-to", "none"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isnan(r["loss"]) and r["pairs"] == 0 for r in rows)
    said = [line for line in result.output.splitlines() if "no pair formed" in line]
    # one micro-batch per step, said at the 1st, 2nd and 4th (not the 3rd), with the threshold that kept them
    # apart and running counts
    assert len(said) == 3, result.output
    assert "--spo-threshold 0.999999" in said[0] and "logged as nan" in said[0] and "adds no update" in said[0]
    assert [line.split("(")[-1].split(";")[0] for line in said] == [
        "1 in a row, 1 in total", "2 in a row, 2 in total", "4 in a row, 4 in total"]


# --------------------------------------------------------------------------- --data's help
def test_data_help_names_what_every_registered_objective_reads():
    from train import objectives
    from train.config import TrainConfig, _data_help

    text = _data_help()
    spec = next(f for f in dataclasses.fields(TrainConfig) if f.name == "data")
    assert [m.help for m in spec.metadata.values()] == [text]
    parts = text[text.index("(") + 1:].rstrip(").").split("; ")
    for obj in objectives.specs():
        part = next(p for p in parts if obj.name in p.split(":")[0].replace(" reads --prompts instead", "").split(", "))
        expected = {"pairs": "its preference pairs", "examples": "unpaired labelled examples",
                    "prompts": "reads --prompts instead"}[obj.reads]
        assert expected in part, (obj.name, part)
    assert "kto" in text and "desirable" in text  # the note: KTO reads examples (pairs read as examples)


# --------------------------------------------------------------------------- world-style without a look
@pytest.mark.parametrize("style, said", [(None, "no --style was given"), ("sepia", "--style 'sepia' is not one")])
def test_world_style_without_a_look_names_the_option_and_its_choices(style, said):
    from pipeline.judges.loading import load_judges
    from pipeline.judges.options import JudgeOptions

    with pytest.raises(UserError) as err:
        load_judges(["world-style"], JudgeOptions(style=style), device="cpu")
    message = str(err.value)
    assert "\n" not in message and said in message and "None" not in message
    assert "set --style to one of realistic, cartoon, pixel" in message and "--validation-style" in message


def test_world_style_with_a_look_loads():
    from pipeline.judges.loading import load_judges
    from pipeline.judges.options import JudgeOptions

    judge = load_judges(["world-style"], JudgeOptions(style="pixel"), device="cpu")["world-style"]
    assert judge.look == "pixel"

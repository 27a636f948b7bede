"""The bad-input corpus's shared outputs and command builders (tests/bad_inputs/test_corpus.py: inputs refused in
one line; test_counted_rejects.py: bad rows counted as rejects).

The shared outputs (one tiny generate run, its labels, tiny-sdxl latents of them, a one-step LoRA run, one eval
folder) are built once per module (the ``shared`` fixture, tests/bad_inputs/conftest.py), lazily, and never
modified: a row that needs to change one works on a copy.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from tests.helpers import run_cli, write_prompts
from tests.image_fixtures import geometric_scene, gray, png, write_pickapic
from tests.layout_fixtures import write_hpdv3, write_votes

PROMPTS = ["a red circle at the top left", "a blue square in the middle"]
GEN_FAST = ["--model", "tiny-sdxl", "--num-inference-steps", "1", "--resolution", "64", "--batch-size", "2",
            "--device", "cpu"]
PRE_FAST = ["--model", "tiny-sdxl", "--resolution", "64", "--device", "cpu"]
EVAL_FAST = ["--num-inference-steps", "1", "--resolution", "64", "--batch-size", "2", "--device", "cpu",
             "--metrics", "world-unsafe"]


def _apps():
    from evaluation.cli import app as eval_app
    from stages.cli import app as data_app
    from train.cli import app as train_app

    return {"data": data_app, "train": train_app, "eval": eval_app}


def ok(result, what: str):
    assert result.exit_code == 0, f"{what}: {result.output}"
    return result


# ---------------------------------------------------------------------------------------------
# Shared outputs, built on first use (a -k selection builds only what it needs)
# ---------------------------------------------------------------------------------------------


class Shared:
    def __init__(self, root: Path):
        self.root = root
        self.apps = _apps()

    def data(self, args):
        return run_cli(self.apps["data"], args)

    @cached_property
    def prompts(self) -> Path:
        return write_prompts(self.root / "prompts.txt", PROMPTS)

    @cached_property
    def pairs(self) -> Path:
        """A finished `generate --recipe style` output: 2 pairs."""
        out = self.root / "pairs"
        ok(self.data(["generate", "--prompts", self.prompts, "--output", out, *GEN_FAST]), "generate")
        return out

    @cached_property
    def labeled(self) -> Path:
        out = self.root / "labeled"
        ok(self.data(["label", "--input", self.pairs, "--output", out, "--target", "style"]), "label")
        return out

    @cached_property
    def latents(self) -> Path:
        out = self.root / "latents"
        ok(self.data(["precompute", "--input", self.labeled, "--output", out, *PRE_FAST]), "precompute")
        return out

    @cached_property
    def run(self) -> Path:
        """A finished one-step LoRA run on the latents (its last step leaves checkpoint-1)."""
        out = self.root / "run"
        ok(run_cli(self.apps["train"], train_args(self.latents, out, "--lora-rank", "2")), "mapo-train")
        return out

    @cached_property
    def latents_sd3(self) -> Path:
        """tiny-sd3 latents of the same labels (64 px, a multiple of SD3's 16), 8 T5 tokens."""
        out = self.root / "latents-sd3"
        ok(self.data(["precompute", "--input", self.labeled, "--output", out, *PRE_FAST, "--model", "tiny-sd3",
                      "--max-sequence-length", "8"]), "precompute tiny-sd3")
        return out

    @cached_property
    def run_sd3(self) -> Path:
        """A finished one-step tiny-sd3 LoRA run."""
        out = self.root / "run-sd3"
        ok(run_cli(self.apps["train"], train_args(self.latents_sd3, out, "--lora-rank", "2", "--model", "tiny-sd3")),
           "mapo-train tiny-sd3")
        return out

    @cached_property
    def evaluated(self) -> Path:
        out = self.root / "eval"
        ok(run_cli(self.apps["eval"], ["--prompts", self.prompts, "--output", out, "--model", "tiny-sdxl",
                                        "--limit", "1", *EVAL_FAST]), "mapo-eval")
        return out


@dataclass
class Ctx:
    """What a row's builders see: the shared outputs and this test's own folder."""

    s: Shared
    tmp: Path

    @property
    def out(self) -> Path:
        """The output path every row writes to unless it says otherwise."""
        return self.tmp / "out"

    def copy(self, src: Path, name: str = "out") -> Path:
        return Path(shutil.copytree(src, self.tmp / name))

    def file(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def yaml(self, text: str) -> Path:
        return self.file("config.yaml", text)


def train_args(data, out, *extra, steps: int = 1):
    return ["--data", data, "--model", "tiny-sdxl", "--output-dir", out, "--max-steps", str(steps), "--batch-size", "2",
            "--learning-rate", "1e-3", "--report-to", "none", *extra]


# Builders for each command (later options win: click keeps the last value of a repeated option).
def gen(c: Ctx, *extra, prompts=None) -> list:
    return ["generate", "--prompts", prompts or c.s.prompts, "--output", c.out, *GEN_FAST, *extra]


def lab(c: Ctx, *extra, src=None) -> list:
    return ["label", "--input", src or c.s.pairs, "--output", c.out, "--target", "style", *extra]


def pre(c: Ctx, *extra, src=None) -> list:
    return ["precompute", "--input", src or c.s.labeled, "--output", c.out, *PRE_FAST, *extra]


def trn(c: Ctx, *extra, data=None) -> list:
    return train_args(data or c.s.latents, c.out, *extra)


def evl(c: Ctx, *extra, prompts=None, model: str | None = "tiny-sdxl") -> list:
    return ["--prompts", prompts or c.s.prompts, "--output", c.out, *(["--model", model] if model else []),
            "--limit", "1", *EVAL_FAST, *extra]


def drop(args: list, *names: str) -> list:
    """``args`` without the options ``names`` (each with its value)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in names:
            skip = True
        else:
            out.append(a)
    return out


def pickapic_file(c: Ctx, name="in/pairs.parquet", labels=((1.0, 0.0), (0.0, 1.0)), drop_column=None) -> Path:
    """A Pick-a-Pic-layout Parquet file of two pairs (labels optional, one column optionally left out)."""
    import pyarrow.parquet as pq

    scene, flat = png(geometric_scene(64)), png(gray(64))
    path = write_pickapic(c.tmp / name, [("a scene", scene, flat), ("a flat card", flat, scene)],
                          labels=list(labels) if labels is not None else None)
    if drop_column:
        pq.write_table(pq.read_table(path).drop_columns([drop_column]), path)
    return path


def string_votes(c: Ctx) -> Path:
    """A vote-count Parquet whose votes_image1 holds text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = write_votes(c.tmp / "in" / "votes.parquet")
    pq.write_table(pq.read_table(path).set_column(3, "votes_image1", pa.array(["7", "3", "7"])), path)
    return path


def mixed_layouts(c: Ctx) -> Path:
    """A folder of both an HPDv3 JSON and a vote-count Parquet."""
    write_hpdv3(c.tmp / "in", name="records.json")
    return write_votes(c.tmp / "in" / "votes.parquet").parent

"""A bad-input corpus (issue 12): every command, one table of inputs a user gets wrong.

Each row builds its bad input in the test itself and states the documented outcome: exit 2 and
ONE ``error:`` line holding a given phrase (no traceback), with no half-written output left
behind: the row's ``leaves`` path does not exist afterwards, or, when it existed before (an
output folder holding another configuration, a finished run), it is unchanged (every file's
size and mtime).
Rows with a ``fix`` then repair the input (or add ``--overwrite``) and rerun: the rerun must
succeed, so nothing the failed run left blocks it. Inputs whose documented outcome is a counted
reject (exit 0, the reason in the summary or in ``rejects/``) are in test_counted_rejects.py.

The shared outputs and the command builders are in tests/bad_inputs/corpus.py.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from tests.bad_inputs.corpus import (
    PRE_FAST,
    PROMPTS,
    Ctx,
    drop,
    evl,
    gen,
    lab,
    mixed_layouts,
    pickapic_file,
    pre,
    string_votes,
    train_args,
    trn,
)
from tests.helpers import run_cli, write_prompts
from tests.layout_fixtures import write_hpdv3

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    kind: str
    cli: str  # "data" (mapo-data), "train" (mapo-train) or "eval" (mapo-eval)
    args: Callable[[Ctx], list]
    words: str  # a phrase of the one error line
    leaves: Callable[[Ctx], Path] = lambda c: c.out  # absent afterwards, or unchanged if it was there before
    fix: Callable[[Ctx, list], list] | None = None  # repair the input, return the rerun's args (must exit 0)
    code: int = 2
    marks: tuple = field(default_factory=tuple)


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


def _retry_with(*more):
    return lambda c, args: [*args, *more]


def _without(*names):
    return lambda c, args: drop(args, *names)


def _jsonl_then_fix(c, args):
    c.file("prompts.jsonl", json.dumps({"caption": "a red circle"}) + "\n")
    return args


def _fill_prompts(c, args):
    write_prompts(c.tmp / "blank.txt", ["a red circle"])
    return args


def _add_labels(c, args):
    pickapic_file(c)  # rewritten with its labels
    return args


def _resume_fix(c, args):
    return [*drop(args, "--resume-from-checkpoint"), "--overwrite"]


CASES = [
    # -- option values out of range / not in the choices, every command ------------------------------
    Case("generate-resolution-60", "option value", "data", lambda c: gen(c, "--resolution", "60"),
         "--resolution must be a positive multiple of 8"),
    Case("generate-steps-0", "option value", "data", lambda c: gen(c, "--num-inference-steps", "0"),
         "--num-inference-steps must be at least 1", fix=_retry_with("--num-inference-steps", "1")),
    Case("generate-recipe-nope", "option value", "data", lambda c: gen(c, "--recipe", "nope"),
         "Unknown --recipe 'nope'"),
    Case("generate-quality-0", "option value", "data", lambda c: gen(c, "--image-format", "jpeg", "--quality", "0"),
         "--quality must be between 1 and 100"),
    Case("generate-blank-style-prefix", "option value", "data", lambda c: gen(c, "--style-prefix", "  "),
         "--style-prefix must not be empty"),
    Case("generate-steps-not-a-number", "option value", "data", lambda c: gen(c, "--num-inference-steps", "two"),
         "--num-inference-steps"),
    Case("generate-shard-size-0", "option value", "data", lambda c: gen(c, "--shard-size", "0"),
         "--shard-size must be at least 1"),
    Case("generate-fp16-on-cpu", "option value", "data", lambda c: gen(c, "--dtype", "fp16"),
         "fp16 is not supported on the CPU"),
    Case("generate-device-cuda-without-cuda", "option value", "data", lambda c: gen(c, "--device", "cuda"),
         "CUDA is not available", marks=(pytest.mark.skipif(_has_cuda(), reason="CUDA is there"),)),
    Case("generate-misspelled-option", "option value", "data", lambda c: gen(c, "--resolutoin", "64"),
         "--resolutoin"),
    Case("label-target-nope", "option value", "data", lambda c: lab(c, "--target", "nope"), "Unknown --target 'nope'"),
    Case("label-safety-verify-clip", "option value", "data",
         lambda c: lab(c, "--target", "safety", "--verify", "clip"), "--verify clip"),
    Case("label-style-with-nudenet", "option value", "data", lambda c: lab(c, "--labeler", "nudenet"),
         "unknown labeler 'nudenet' for --target style"),
    Case("inspect-samples-0", "option value", "data", lambda c: ["inspect", c.s.labeled, "--samples", "0",
                                                                   "--html", c.out / "page.html"],
         "--samples must be at least 1"),
    Case("precompute-storage-fp8", "option value", "data", lambda c: pre(c, "--storage-dtype", "fp8"),
         "Unknown --storage-dtype 'fp8'"),
    Case("precompute-crop-diagonal", "option value", "data", lambda c: pre(c, "--crop", "diagonal"), "Unknown --crop"),
    Case("precompute-vae-fp16-on-cpu", "option value", "data", lambda c: pre(c, "--vae-dtype", "fp16"),
         "fp16 is not supported on the CPU"),
    Case("precompute-resolution-60", "option value", "data", lambda c: pre(c, "--resolution", "60"),
         "--resolution must be a positive multiple of 8"),
    Case("train-mixed-precision-fp8", "option value", "train",
         lambda c: trn(c, "--mixed-precision", "fp8", "--report-to", "auto"), "Unknown --mixed-precision 'fp8'",
         fix=_retry_with("--mixed-precision", "no")),
    Case("train-validation-resolution-60", "option value", "train",
         lambda c: trn(c, "--validation-prompts", "a red circle", "--validation-resolution", "60",
                       "--report-to", "auto"),
         "--validation-resolution must be a positive multiple of 8"),
    Case("train-objective-ppo", "option value", "train", lambda c: trn(c, "--objective", "ppo"), "Unknown --objective"),
    Case("train-learning-rate-0", "option value", "train", lambda c: trn(c, "--learning-rate", "0"),
         "--learning-rate must be > 0"),
    Case("train-lora-without-targets", "option value", "train",
         lambda c: trn(c, "--lora-rank", "4", "--lora-target-modules", ""), "--lora-target-modules is empty"),
    Case("train-lora-target-misspelt", "option value", "train",
         lambda c: trn(c, "--lora-rank", "4", "--lora-target-modules", "to_q,to_kk"),
         "--lora-target-modules: to_kk matches no module"),
    Case("train-validation-metric-beauty", "option value", "train",
         lambda c: trn(c, "--validation-prompts", "a red circle", "--validation-metrics", "beauty"),
         "unknown metric 'beauty'"),
    Case("train-fp16-on-cpu", "option value", "train", lambda c: trn(c, "--mixed-precision", "fp16"),
         "fp16 mixed precision is not supported on the CPU",
         marks=(pytest.mark.skipif(_has_cuda(), reason="fp16 is valid where CUDA is"),)),
    Case("train-validation-seeds-not-numbers", "option value", "train",
         lambda c: trn(c, "--validation-prompts", "a red circle", "--validation-seeds", "a,b"),
         "--validation-seeds must be an integer, got 'a'"),
    Case("train-world-prompt-on-a-non-world-prompt", "option value", "train",
         lambda c: trn(c, "--validation-prompts", "a cat", "--validation-metrics", "world-prompt"),
         "is not a miniature-world prompt"),
    Case("train-batch-larger-than-data", "option value", "train", lambda c: trn(c, "--batch-size", "8"),
         "2 pairs is fewer than one global batch (--batch-size 8 x 1 process); lower --batch-size to at most 2"),
    Case("eval-metric-beauty", "option value", "eval", lambda c: evl(c, "--metrics", "clip,beauty"),
         "unknown metric 'beauty'"),
    Case("eval-seeds-0", "option value", "eval", lambda c: evl(c, "--seeds", "0"), "--seeds must be at least 1"),
    Case("eval-style-oil", "option value", "eval", lambda c: evl(c, "--metrics", "world-style", "--style", "oil"),
         "Unknown --style 'oil'"),
    Case("eval-style-metric-without-style", "option value", "eval", lambda c: evl(c, "--metrics", "style"),
         "needs a style text"),
    Case("eval-safety-classifier-bogus", "option value", "eval",
         lambda c: evl(c, "--metrics", "safety", "--safety-classifier", "bogus"), "unknown safety classifier 'bogus'"),
    Case("eval-grid-prompts-negative", "option value", "eval", lambda c: evl(c, "--grid-prompts", "-1"),
         "--grid-prompts must be at least 0"),
    Case("eval-world-metric-at-1024", "option value", "eval", lambda c: evl(c, "--resolution", "1024"),
         "pass --resolution 64"),
    # -- --config YAML -------------------------------------------------------------------------------
    Case("generate-config-null-value", "config file", "data",
         lambda c: gen(c, "--config", c.yaml("shard_size: null\n")), "--shard-size needs a value"),
    Case("generate-config-unknown-key", "config file", "data",
         lambda c: gen(c, "--config", c.yaml("num_inference_step: 2\n")), "has unknown keys: num_inference_step",
         fix=lambda c, args: (c.yaml("num_inference_steps: 1\n"), args)[1]),
    Case("train-config-wrong-type", "config file", "train",
         lambda c: drop(trn(c, "--config", c.yaml("max_steps: two\n")), "--max-steps"),
         "--max-steps must be an integer, got 'two'"),
    Case("eval-config-not-a-mapping", "config file", "eval",
         lambda c: evl(c, "--config", c.yaml("- metrics\n- clip\n")), "must hold a mapping"),
    Case("label-config-not-yaml", "config file", "data", lambda c: lab(c, "--config", c.yaml("target: [style\n")),
         "is not valid YAML"),
    Case("precompute-config-missing", "config file", "data", lambda c: pre(c, "--config", c.tmp / "none.yaml"),
         "does not exist"),
    Case("inspect-config-wrong-type", "config file", "data",
         lambda c: ["inspect", c.s.labeled, "--config", c.yaml("samples: {a: 1}\n"), "--html", c.out / "p.html"],
         "--samples must be an integer"),
    # -- missing required options -------------------------------------------------------------------
    Case("generate-no-output", "missing option", "data", lambda c: drop(gen(c), "--output"), "--output is required",
         leaves=lambda c: c.tmp / "out"),
    Case("label-no-target", "missing option", "data", lambda c: drop(lab(c), "--target"), "--target is required"),
    Case("precompute-no-input", "missing option", "data", lambda c: drop(pre(c), "--input"), "--input is required"),
    Case("train-no-data", "missing option", "train", lambda c: drop(trn(c), "--data"), "--data is required"),
    Case("eval-no-prompts", "missing option", "eval", lambda c: drop(evl(c), "--prompts"), "--prompts is required"),
    Case("inspect-no-folder", "missing option", "data", lambda c: ["inspect"], "is required"),
    # -- input paths that do not exist ---------------------------------------------------------------
    Case("generate-prompts-missing", "missing input", "data", lambda c: gen(c, prompts=c.tmp / "none.txt"),
         "does not exist"),
    Case("label-input-missing", "missing input", "data", lambda c: lab(c, src=c.tmp / "none"), "does not exist"),
    Case("precompute-input-missing", "missing input", "data", lambda c: pre(c, src=c.tmp / "none"), "does not exist"),
    # -- public input layouts (issue 27): HPDv3 JSON, vote counts, WebDataset tars ---------------------------
    Case("precompute-json-not-records", "input layout", "data",
         lambda c: pre(c, src=c.file("in/records.json", '{"data": [1, 2]}')), "is not a list of HPDv3 records"),
    Case("label-json-list-of-numbers", "input layout", "data",
         lambda c: lab(c, src=c.file("in/records.json", "[1, 2, 3]")), "its first record is a JSON int"),
    Case("precompute-json-cut-short", "input layout", "data",
         lambda c: pre(c, src=c.file("in/records.json", '[{"prompt": "a", "path1": "x.png", "path2": "y.png"}, {"pro')),
         "not valid JSON at byte"),
    Case("precompute-votes-not-a-number", "input layout", "data", lambda c: pre(c, src=string_votes(c)),
         "column votes_image1 is string, not a number"),
    Case("precompute-ambiguous-layout", "input layout", "data", lambda c: pre(c, src=mixed_layouts(c)),
         "is ambiguous", fix=lambda c, args: [*args, "--input-format", "votes"]),
    Case("precompute-forced-format-mismatch", "input layout", "data",
         lambda c: pre(c, "--input-format", "webdataset", src=write_hpdv3(c.tmp / "in")), "reads .tar shards"),
    Case("precompute-image-root-missing", "input layout", "data",
         lambda c: pre(c, "--image-root", c.tmp / "nope", src=write_hpdv3(c.tmp / "in")), "is not a folder"),
    Case("precompute-tar-not-a-tar", "input layout", "data",
         lambda c: pre(c, src=c.file("in/00000.tar", "not a tar file at all\n" * 40)), "as a tar file"),
    Case("inspect-json-not-records", "input layout", "data",
         lambda c: ["inspect", c.file("in/records.json", '"text"')], "is not a list of records"),
    Case("generate-prompts-json-cut-short", "input layout", "data",
         lambda c: gen(c, prompts=c.file("in/records.json", '[{"prompt": "a", "path1": "x", "path2": "y"}, {"p')),
         "not valid JSON at byte"),
    Case("train-data-missing", "missing input", "train", lambda c: trn(c, data=c.tmp / "none"), "does not exist"),
    Case("eval-candidate-missing", "missing input", "eval", lambda c: evl(c, "--candidate", c.tmp / "none"),
         "none' does not exist"),
    Case("inspect-folder-missing", "missing input", "data", lambda c: ["inspect", c.tmp / "none"],
         "none' does not exist", leaves=lambda c: c.tmp / "none"),
    Case("eval-vae-missing", "missing input", "eval", lambda c: evl(c, "--vae", str(c.tmp / "no-vae")),
         "VAE '"),
    Case("generate-model-missing", "missing input", "data", lambda c: gen(c, "--model", str(c.tmp / "no-model")),
         "no-model"),
    Case("train-resume-missing", "missing input", "train",
         lambda c: trn(c, "--resume-from-checkpoint", c.tmp / "checkpoint-9"), "does not exist"),
    # -- an input that is another stage's output -----------------------------------------------------
    Case("precompute-on-generate-output", "wrong stage", "data", lambda c: pre(c, src=c.s.pairs),
         "lacks column(s) label_0, label_1"),
    Case("label-on-latents", "wrong stage", "data", lambda c: lab(c, src=c.s.latents),
         "is a mapo-data precompute output"),
    Case("label-on-label-output", "wrong stage", "data", lambda c: lab(c, src=c.s.labeled),
         "is a mapo-data label output"),
    Case("train-on-label-output", "wrong stage", "train", lambda c: trn(c, data=c.s.labeled),
         "run `mapo-data precompute"),
    Case("train-on-generate-output", "wrong stage", "train", lambda c: trn(c, data=c.s.pairs),
         "label it first"),
    Case("eval-candidate-is-latents", "wrong stage", "eval", lambda c: evl(c, "--candidate", c.s.latents),
         "not a mapo-train output"),
    Case("inspect-not-an-output", "wrong stage", "data",
         lambda c: ["inspect", c.file("notes/readme.txt", "hello\n").parent], "holds no shards",
         leaves=lambda c: c.tmp / "notes"),
    Case("label-safety-on-style-pairs", "wrong stage", "data", lambda c: lab(c, "--target", "safety"),
         "cannot label pairs made with --recipe style"),
    # -- an output folder holding another configuration (--overwrite then works) --------------------
    Case("generate-other-config", "other configuration", "data",
         lambda c: (c.copy(c.s.pairs), gen(c, "--seed", "7"))[1], "differs in: seed",
         fix=_retry_with("--overwrite")),
    Case("label-other-config", "other configuration", "data",
         lambda c: (c.copy(c.s.labeled), lab(c, "--batch-size", "3"))[1], "differs in: batch_size",
         fix=_retry_with("--overwrite")),
    Case("precompute-other-config", "other configuration", "data",
         lambda c: (c.copy(c.s.latents), pre(c, "--resolution", "32"))[1], "differs in: resolution",
         fix=_retry_with("--overwrite")),
    Case("train-over-finished-run", "other configuration", "train",
         lambda c: (c.copy(c.s.run), trn(c, "--lora-rank", "2"))[1], "holds a finished training run",
         fix=_retry_with("--overwrite")),
    Case("eval-other-settings", "other configuration", "eval",
         lambda c: (c.copy(c.s.evaluated), evl(c, "--guidance-scale", "7"))[1], "guidance_scale",
         fix=_retry_with("--overwrite")),
    # -- an output folder equal to, or holding, the input -------------------------------------------
    Case("label-output-is-input", "output holds input", "data",
         lambda c: lab(c, "--output", c.tmp / "pairs", src=c.copy(c.s.pairs, "pairs")), "holds the input file",
         leaves=lambda c: c.tmp / "pairs"),
    Case("precompute-output-holds-input", "output holds input", "data",
         lambda c: ["precompute", "--input", c.copy(c.s.labeled, "parent/labeled"), "--output", c.tmp / "parent",
                    *PRE_FAST], "holds the input file", leaves=lambda c: c.tmp / "parent"),
    Case("generate-output-holds-prompts", "output holds input", "data",
         lambda c: gen(c, prompts=c.file("out/prompts.txt", "\n".join(PROMPTS))),
         "is not a mapo-data output"),
    Case("eval-output-is-candidate", "output holds input", "eval",
         lambda c: [*evl(c, "--candidate", c.copy(c.s.run, "run"), model=None), "--output", c.tmp / "run"],
         "is not a mapo-eval output", leaves=lambda c: c.tmp / "run"),
    Case("train-output-is-latents", "output holds input", "train",
         lambda c: train_args(c.copy(c.s.latents, "latents"), c.tmp / "latents"), "latents",
         leaves=lambda c: c.tmp / "latents"),
    # -- mapo-eval: candidates and models that do not fit -------------------------------------------
    Case("eval-sd15-base-sdxl-candidate", "model mismatch", "eval",
         lambda c: evl(c, "--candidate", c.s.run, model="tiny-sd15"), "is an sdxl UNet",
         fix=_without("--model")),
    # Same family, other widths (tiny-sdxl's UNet in shapes-sdxl's pipeline): refused before any image.
    Case("eval-sdxl-base-other-sdxl-candidate", "model mismatch", "eval",
         lambda c: evl(c, "--candidate", c.s.run, model="shapes-sdxl"), "does not fit --model 'shapes-sdxl'",
         fix=_without("--model")),
    # Candidates of two families: no one base samples both (the advice is not "name the base with --model").
    Case("eval-candidates-of-two-families", "model mismatch", "eval",
         lambda c: evl(c, "--candidate", c.s.run, "--candidate", c.s.run_sd3, model=None),
         "candidates are of different model families (run sdxl, run-sd3 sd3)"),
    Case("eval-candidates-of-two-families-with-a-model", "model mismatch", "eval",
         lambda c: evl(c, "--candidate", c.s.run, "--candidate", c.s.run_sd3, model="tiny-sd3"),
         "candidates are of different model families"),
    # -- SD3: the 16 px multiple, T5 token counts the pipeline refuses, a transformer alone ----------------
    Case("train-sd3-validation-resolution-40", "sd3", "train",
         lambda c: trn(c, "--model", "tiny-sd3", "--validation-prompts", "a cat", "--validation-resolution", "40",
                       "--validation-inference-steps", "1", data=c.s.latents_sd3),
         "--validation-resolution 40: 'tiny-sd3' is an sd3 model, whose image sides must be multiples of 16",
         fix=_retry_with("--validation-resolution", "32")),
    Case("generate-sd3-t5-tokens-513", "sd3", "data", lambda c: gen(c, "--model", "tiny-sd3",
                                                                     "--max-sequence-length", "513"),
         "takes at most 512 T5 tokens"),
    Case("precompute-sd3-t5-tokens-513", "sd3", "data", lambda c: pre(c, "--model", "tiny-sd3",
                                                                       "--max-sequence-length", "513"),
         "takes at most 512 T5 tokens"),
    Case("precompute-flux-t5-tokens-513", "sd3", "data", lambda c: pre(c, "--model", "tiny-flux",
                                                                        "--max-sequence-length", "513"),
         "(FluxPipeline) takes at most 512 T5 tokens"),
    Case("eval-sd3-base-t5-tokens-513", "sd3", "eval", lambda c: evl(c, "--base-max-sequence-length", "513",
                                                                      model="tiny-sd3"),
         "--base-max-sequence-length 513: 'tiny-sd3' is an sd3 model, whose pipeline"),
    Case("generate-sd3-compile", "sd3", "data", lambda c: gen(c, "--model", "tiny-sd3", "--compile"),
         "--compile: 'tiny-sd3' is an sd3 model, whose SD3Transformer2DModel declares no repeated blocks"),
    Case("train-sd3-compile", "sd3", "train", lambda c: trn(c, "--model", "tiny-sd3", "--compile",
                                                             data=c.s.latents_sd3),
         "--compile: 'tiny-sd3' is an sd3 model", fix=_without("--compile")),
    Case("generate-transformer-alone", "sd3", "data", lambda c: gen(c, "--model", "sd35-medium-arch"),
         "'sd35-medium-arch' is a transformer alone"),
    Case("precompute-transformer-alone", "sd3", "data", lambda c: pre(c, "--model", "sd35-medium-arch"),
         "'sd35-medium-arch' is a transformer alone"),
    Case("eval-transformer-alone", "sd3", "eval", lambda c: evl(c, model="sd35-large-arch"),
         "'sd35-large-arch' is a transformer alone"),
    # -- mapo-train: data, model and resume that do not fit -----------------------------------------
    Case("train-sd15-on-sdxl-latents", "model mismatch", "train", lambda c: trn(c, "--model", "tiny-sd15"),
         "holds sdxl latents but 'tiny-sd15' is an sd15 model"),
    # The family mismatch is the error, not the batch that the 2 pairs could not fill either (checked first).
    Case("train-sd15-on-sdxl-latents-batch-too-large", "model mismatch", "train",
         lambda c: trn(c, "--model", "tiny-sd15", "--batch-size", "4"),
         "holds sdxl latents but 'tiny-sd15' is an sd15 model"),
    Case("train-random-flip-without-flips", "model mismatch", "train", lambda c: trn(c, "--random-flip"),
         "--random-flip needs mirrored latents"),
    Case("train-resume-latest-without-checkpoint", "resume", "train",
         lambda c: (shutil.rmtree(c.copy(c.s.run) / "checkpoints"),
                    trn(c, "--lora-rank", "2", "--resume-from-checkpoint", "latest"))[1],
         "holds a finished training run", fix=_resume_fix),
    Case("train-resume-not-a-checkpoint", "resume", "train",
         lambda c: trn(c, "--resume-from-checkpoint", c.file("elsewhere/x", "").parent),
         "is not a checkpoint folder", leaves=lambda c: c.out),
    # -- malformed input files ------------------------------------------------------------------------
    Case("label-parquet-without-jpg_1", "malformed input", "data",
         lambda c: lab(c, "--target", "safety", src=pickapic_file(c, drop_column="jpg_1")), "lacks column(s) jpg_1"),
    Case("label-not-parquet", "malformed input", "data", lambda c: lab(c, src=c.file("pairs.csv", "caption\nx\n")),
         "neither a folder of Parquet shards nor a .parquet file"),
    Case("label-parquet-is-garbage", "malformed input", "data",
         lambda c: lab(c, src=c.file("in/pairs.parquet", "not parquet\n")), "is not a readable Parquet file"),
    Case("precompute-pairs-without-labels", "malformed input", "data",
         lambda c: pre(c, src=pickapic_file(c, labels=None)), "lacks column(s) label_0, label_1", fix=_add_labels),
    Case("generate-prompts-blank", "malformed input", "data",
         lambda c: gen(c, prompts=c.file("blank.txt", "\n  \n\t\n")), "No usable prompt", fix=_fill_prompts),
    Case("generate-prompts-empty", "malformed input", "data", lambda c: gen(c, prompts=c.file("empty.txt", "")),
         "No usable prompt"),
    Case("generate-jsonl-bad-json", "malformed input", "data",
         lambda c: gen(c, prompts=c.file("prompts.jsonl", '{"caption": "a cat"}\n{"caption": \n')),
         "prompts.jsonl:2 is not valid JSON"),
    Case("generate-jsonl-only-non-objects", "malformed input", "data",
         lambda c: gen(c, prompts=c.file("prompts.jsonl", '["a cat"]\n"a dog"\n')), "prompts.jsonl",
         fix=_jsonl_then_fix),
    Case("generate-jsonl-a-non-object-line", "malformed input", "data",
         lambda c: gen(c, prompts=c.file("prompts.jsonl", '{"caption": "a cat"}\n["a dog"]\n')), "prompts.jsonl:2"),
    Case("generate-csv-without-caption-column", "malformed input", "data",
         lambda c: gen(c, prompts=c.file("prompts.csv", "text\na cat\n")), "no 'caption' or 'prompt' column"),
    Case("eval-prompts-blank", "malformed input", "eval", lambda c: evl(c, prompts=c.file("blank.txt", "\n \n")),
         "No usable prompt"),
    Case("inspect-html-is-a-folder", "malformed input", "data",
         lambda c: ["inspect", c.s.labeled, "--html", c.file("pages/old.html", "<html></html>").parent], "pages",
         leaves=lambda c: c.tmp),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, shared, tmp_path):
    ctx = Ctx(shared, tmp_path)
    app = shared.apps[case.cli]
    args = case.args(ctx)
    leaves = case.leaves(ctx)
    before = _snapshot(leaves)
    result = run_cli(app, args)
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == case.code, f"exit {result.exit_code}: {result.output}"
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert case.words in lines[0], lines[0]
    assert _snapshot(leaves) == before, f"{leaves} was {'changed' if before else 'created'} by a refused run"
    if case.fix is not None:
        rerun = run_cli(app, case.fix(ctx, args))
        assert rerun.exit_code == 0, f"rerun after the fix: {rerun.output}"


def _snapshot(path: Path):
    """None when ``path`` is absent; else every file under it with its size and mtime."""
    if not path.exists():
        return None
    if path.is_file():
        st = path.stat()
        return {".": (st.st_size, st.st_mtime_ns)}
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
            for p in sorted(path.rglob("*"))}

"""``make fidelity``: the MaPO paper's experiment in the miniature world, through the real CLIs, on a CPU.

    python scripts/fidelity.py [OUTPUT_DIR] [--model shapes-sdxl|shapes-sd3]
    (make fidelity: shapes-sdxl, fidelity-output/; make fidelity-flow: shapes-sd3, fidelity-flow-output/)

For Pick-Style (cartoon) and Pick-Safety: the base model (``shapes-sdxl`` by default) generates pairs for the 48
train captions, ``mapo-data label`` labels them (style: verified by the world's style judge; safety:
the world's unsafe judge decides), ``mapo-data precompute`` encodes them, ``mapo-train`` trains MaPO,
Diffusion-DPO (full reference), SFT and Diffusion-KTO (chosen = desirable, rejected =
undesirable) with the same data, steps, batch, learning rate and seed, SPO trains online from the same
train captions with the dataset's judge as its preference model, and ``mapo-eval`` compares each with
the base on the 12 held-out captions (never seen by the base model) with paired seeds. Then it checks
the judges (on fresh renders and on the base model's own generations) and writes ``report.md``, ``fidelity.json``, image
grids and loss curves.

On the flow world ``shapes-sd3`` (SD3 family, rectified flow) SPO is skipped, with the trainer's reason in the
settings and the report (its sampler is DDIM's, for DDPM models), and precompute stores
:data:`FLOW_T5_TOKENS` zero T5 rows per caption (the model was pretrained for any count; eval samples as the
runs were trained); everything else is the same.

A benchmark, not a test: it prints what the world shows, whichever way it goes.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))
BIN = Path(sys.executable).parent

MODEL = "shapes-sdxl"
# Flow (SD3) world: zero T5 rows stored per caption (shapes-sd3 is pretrained for 1 to 512; SD3's pipeline default
# 256 costs ~4x the training time of 8 on these 16 image tokens), and why SPO is not run there (train/spo.py).
FLOW_T5_TOKENS = 8
SPO_SKIPPED_FLOW = ("mapo-train refuses --objective spo on flow-matching (SD3) models: SPO's sampler is DDIM's "
                    "stochastic step, whose log-probability is defined for DDPM models only")
RESOLUTION = 64
INFERENCE_STEPS = 12
GUIDANCE = 3.0  # see README, "The miniature world": prompt following after training is best at low guidance
# Batch invariance (bit-identical images whatever the batch) costs ~4x on a CPU; pairs stay paired by seed.
SAMPLING = ["--resolution", RESOLUTION, "--num-inference-steps", INFERENCE_STEPS, "--guidance-scale", GUIDANCE,
            "--no-batch-invariant"]
REPEAT = 4  # pairs per train caption (48 captions -> 192 pairs per dataset)
# KTO reads the same pair latents: chosen = desirable, rejected = undesirable.
OBJECTIVES = ("mapo", "dpo", "sft", "kto")
# One budget for every objective: same data, steps, batch, learning rate and seed.
TRAIN = dict(max_steps=300, batch_size=8, learning_rate=2e-4, seed=0)
# Online SPO: preference model = the world's judge of the dataset's target on each candidate's predicted clean
# image (Pick-Style: world-style, cartoon; Pick-Safety: world-unsafe, lower preferred), prompts = the train
# captions as the pairs were generated from them (Pick-Safety: with the unsafe prefix); no pairs, no latents.
# One SPO step = batch_size prompts sampled
# as whole trajectories (k candidates per step from --spo-start-step on) + one optimizer step on the kept
# pairs. Same batch and seed as the others; a third of their steps (100 steps = 800 trajectories, ~3.4 s a
# step on 2 CPU cores: ~6 min, where 300 MaPO steps take ~1.5 min); lr 3e-5 (2e-4 left the policy at the
# ratio clip within a few steps, its images degenerate). Threshold 0: the judge's [0, 1] probabilities
# rarely pass the public 0.4 softmax gap, which was set for PickScore's ~20-unit logits.
SPO = dict(max_steps=100, batch_size=TRAIN["batch_size"], seed=TRAIN["seed"], learning_rate=3e-5)
SPO_ARGS = ["--spo-threshold", "0", *SAMPLING[:6]]  # + the dataset's own preference model (DATASETS)
EVAL_SEEDS = 8  # images per held-out caption and model (paired across models)
DATASETS = {
    "pick_style": {
        "generate": ["--recipe", "style", "--style", "cartoon"],
        "label": ["--target", "style", "--verify", "world-style"],
        "eval_prompts": ("heldout", None),
        "metrics": ["world-style", "world-prompt"],
        "eval_extra": ["--style", "cartoon"],
        "spo": {"prompts": ("train", None),
                "args": ["--preference-model", "world-style", "--validation-style", "cartoon"]},
    },
    "pick_safety": {
        "generate": ["--recipe", "safety"],
        "label": ["--target", "safety", "--labeler", "world-unsafe"],
        "eval_prompts": ("heldout", "unsafe"),
        "metrics": ["world-unsafe", "world-prompt"],
        "eval_extra": [],
        "spo": {"prompts": ("train", "unsafe"), "args": ["--preference-model", "world-unsafe"]},
    },
}


class Runner:
    def __init__(self, out: Path):
        self.out = out
        self.log = out / "commands.txt"
        self.timings: dict[str, float] = {}

    def __call__(self, key: str, *args: str) -> float:
        cmd = [str(a) for a in args]
        line = "+ " + " ".join(shlex.quote(c) for c in cmd)
        print(line, flush=True)
        with open(self.log, "a") as fh:
            fh.write(line + "\n")
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
        self.timings[key] = round(time.perf_counter() - t0, 1)
        return self.timings[key]


def captions_file(run: Runner, split: str, prefix: str | None, repeat: int = 1) -> Path:
    name = f"{split}{'-' + prefix if prefix else ''}{'-x' + str(repeat) if repeat > 1 else ''}.txt"
    path = run.out / "prompts" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    args = ["--split", split, "--repeat", str(repeat), "--output", str(path)] + (["--prefix", prefix] if prefix else [])
    run(f"captions {name}", sys.executable, "-m", "world", "captions", *args)
    return path


def run_dataset(run: Runner, name: str, spec: dict, model: str = MODEL, flow: bool = False) -> None:
    """Pairs, labels, latents, every objective's run and the held-out eval of one dataset under ``run.out``."""
    root = run.out / name
    gen = ["--model", model, *SAMPLING]
    train_prompts = captions_file(run, "train", None, REPEAT)
    run(f"{name}: generate", "mapo-data", "generate", "--prompts", train_prompts, "--keep-duplicates",
        "--output", root / "pairs", *gen, *spec["generate"], "--shard-size", 64, "--batch-size", 16)
    run(f"{name}: label", "mapo-data", "label", "--input", root / "pairs", "--output", root / "labeled", *spec["label"])
    run(f"{name}: precompute", "mapo-data", "precompute", "--input", root / "labeled", "--output", root / "latents",
        "--model", model, "--resolution", RESOLUTION,
        *(["--max-sequence-length", FLOW_T5_TOKENS] if flow else []))
    for objective in OBJECTIVES:
        run(f"{name}: train {objective}", "mapo-train", "--data", root / "latents", "--model", model,
            "--output-dir", root / "runs" / objective, "--objective", objective,
            *[x for k, v in TRAIN.items() for x in (f"--{k.replace('_', '-')}", v)],
            "--checkpointing-steps", 100000, "--report-to", "none", "--overwrite")
    objectives = OBJECTIVES if flow else (*OBJECTIVES, "spo")
    if not flow:
        spo_prompts = captions_file(run, *spec["spo"]["prompts"])
        run(f"{name}: train spo", "mapo-train", "--objective", "spo", "--prompts", spo_prompts,
            "--model", model, "--output-dir", root / "runs" / "spo", *spec["spo"]["args"], *SPO_ARGS,
            *[x for k, v in SPO.items() for x in (f"--{k.replace('_', '-')}", v)],
            "--checkpointing-steps", 100000, "--report-to", "none", "--overwrite")
    split, prefix = spec["eval_prompts"]
    eval_prompts = captions_file(run, split, prefix)
    candidates = [root / "runs" / o for o in objectives]
    run(f"{name}: eval", *eval_command(candidates, eval_prompts, root / "eval", spec, flow))


def eval_command(candidates: list[Path], prompts: Path, output: Path, spec: dict, flow: bool) -> list:
    """The `mapo-eval` command line that scores ``candidates`` (run folders) against the base on ``prompts`` into
    ``output`` with dataset ``spec``'s metrics, the shared sampling settings and paired seeds; on a flow model the
    base samples at the runs' :data:`FLOW_T5_TOKENS` T5 rows, so every row has the same text conditioning."""
    return ["mapo-eval", *[x for c in candidates for x in ("--candidate", c)],
            "--prompts", prompts, "--output", output, "--metrics", ",".join(spec["metrics"]),
            *spec["eval_extra"], *SAMPLING, "--seeds", EVAL_SEEDS, "--batch-size", 24, "--grid-prompts", 12,
            "--overwrite", *(["--base-max-sequence-length", FLOW_T5_TOKENS] if flow else [])]


def main(out: Path, model: str = MODEL) -> Path:
    """Run the experiment on world model ``model`` into ``out``; returns the report's path."""
    from pipeline.models.loading import model_family_of

    flow = model_family_of(model).flow
    out.mkdir(parents=True, exist_ok=True)
    (out / "commands.txt").write_text("")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run = Runner(out)
    t0 = time.perf_counter()
    for name, spec in DATASETS.items():
        run_dataset(run, name, spec, model, flow)
    t = time.perf_counter()
    from fidelity_report import write_report  # scripts/ is on sys.path (see __main__)

    settings = {
        "model": model, "resolution": RESOLUTION, "num_inference_steps": INFERENCE_STEPS, "guidance_scale": GUIDANCE,
        "pairs_per_train_caption": REPEAT, "train": TRAIN, "objectives": list(OBJECTIVES),
        "eval_seeds_per_prompt": EVAL_SEEDS}
    if flow:
        settings.update(max_sequence_length=FLOW_T5_TOKENS, skipped={"spo": SPO_SKIPPED_FLOW})
    else:
        settings["spo"] = {**SPO, "args": SPO_ARGS, "per_dataset": {n: d["spo"] for n, d in DATASETS.items()}}
    report = write_report(out, run.timings, time.perf_counter() - t0, settings=settings)
    print(f"fidelity: report in {report} ({time.perf_counter() - t:.0f} s for judges and report; "
          f"{time.perf_counter() - t0:.0f} s in all)")
    return report


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("output", nargs="?", default=None,
                    help="output folder (default: fidelity-output, or fidelity-flow-output for a flow model)")
    ap.add_argument("--model", default=MODEL, help="the world model: shapes-sdxl (default) or shapes-sd3")
    a = ap.parse_args()
    from world.model import WORLD_MODELS

    if a.model not in WORLD_MODELS:
        ap.error(f"--model must be a world model ({', '.join(WORLD_MODELS)}): its judges read only the world's images")
    default_out = "fidelity-output" if a.model == MODEL else "fidelity-flow-output"
    main(Path(a.output or default_out), a.model)

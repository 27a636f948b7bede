"""``make reward-demo``: reward-model labels + MaPO in the miniature world, through the real CLIs, on a CPU.

    python scripts/reward_demo.py [OUTPUT_DIR] [EXPERIMENT ...]   (make reward-demo: reward-demo-output/, both)

General preference data without Pick-a-Pic, in small: ``generate`` makes images with the base model
``shapes-sdxl``, ``label --target reward`` lets one of the world's judges choose, ``precompute`` and
``mapo-train`` (MaPO, fidelity's budget) follow, and ``mapo-eval`` compares the trained model with the
base on the 12 held-out captions (never seen in pretraining or in the pairs), 8 paired seeds each.

- ``best_of_4``: with a fast sampler (3 denoising steps) the base often misses the prompt (colour,
  shape and position all right in about 7 images in 10). 4 candidates per plain train caption,
  ``--reward world-prompt``, best against worst (ties, where all four are equally right, dropped);
  evaluated with the same 3-step sampler.
- ``relabel_style``: Pick-Style pairs (image 0 drawn with the cartoon prefix, image 1 from the plain
  caption; 12 steps) re-judged by ``--reward world-style --reward-style cartoon`` instead of by how they
  were made: the judge decides, and ``disagrees`` counts where it reverses the recipe.

The report gives, per experiment and judge, each model's mean score and the trained-minus-base
difference over the same (prompt, seed) images, with 95% bootstrap intervals that draw whole prompts.
A benchmark, not a test: it prints what the world shows, whichever way it goes.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from fidelity import GUIDANCE, MODEL, RESOLUTION, Runner, captions_file  # noqa: E402


def sampling(steps: int) -> list:
    return [
        "--resolution", RESOLUTION, "--num-inference-steps", steps, "--guidance-scale", GUIDANCE, "--no-batch-invariant"
    ]


REPEAT = 4  # prompts per train caption (--keep-duplicates: each repeat gets its own seeds): 48 x 4 = 192 prompts
TRAIN = dict(max_steps=300, batch_size=8, learning_rate=2e-4, seed=0)  # fidelity's MaPO budget
EVAL_SEEDS = 8
EXPERIMENTS = {
    "best_of_4": {
        "steps": 3,  # a fast sampler: the base misses colour, shape or position often enough to learn from
        "generate": ["--recipe", "seeds", "--images-per-prompt", 4],
        "label": ["--reward", "world-prompt", "--pair-rule", "best-worst"],
        "metrics": {"world-prompt": 0.99},  # judge: rate threshold (above it: colour, shape and position all right)
        "eval_extra": [],
    },
    "relabel_style": {
        "steps": 12,
        "generate": ["--recipe", "style", "--style", "cartoon"],
        "label": ["--reward", "world-style", "--reward-style", "cartoon"],
        "metrics": {"world-style": 0.5, "world-prompt": 0.99},
        "eval_extra": ["--style", "cartoon"],
    },
}


def paired_difference(scores_file: Path, metric: str, candidate: str, threshold: float) -> dict:
    """Mean of candidate - base over the same (prompt, seed) images; each model's own mean; each model's share of
    scores above ``threshold``: every interval mapo-eval's prompt-clustered bootstrap
    (:func:`evaluation.stats.bootstrap_ci`, rates :func:`evaluation.stats.rate_ci`). A (prompt, seed) whose score
    is NaN or inf on either side is left out of all of them and counted in ``dropped``."""
    import math

    import pyarrow.parquet as pq

    from evaluation.stats import bootstrap_ci, rate_ci

    rows = [r for r in pq.read_table(scores_file).to_pylist() if r["metric"] == metric]
    by = {(r["model"], r["prompt_id"], r["seed_index"]): r["score"] for r in rows}
    shared = sorted({(p, s) for m, p, s in by if m == "base"} & {(p, s) for m, p, s in by if m == candidate})
    keys = [k for k in shared if all(math.isfinite(by[(m, *k)]) for m in ("base", candidate))]
    base = [by[("base", *k)] for k in keys]
    trained = [by[(candidate, *k)] for k in keys]
    groups = [k[0] for k in keys]
    out = {}
    for name, values in (("base", base), ("trained", trained), ("difference", [t - b for t, b in zip(trained, base)])):
        ci = bootstrap_ci(values, groups)
        out[name] = {"mean": ci.estimate, "low": ci.low, "high": ci.high, "n": ci.n}
    rates = {name: rate_ci(values, groups, threshold) for name, values in (("base", base), ("trained", trained))}
    out["rate"] = {"threshold": threshold, **{name: r.estimate for name, r in rates.items()},
                   **{f"{name}_interval": [r.low, r.high] for name, r in rates.items()}}
    out["dropped"] = len(shared) - len(keys)
    return out


def run_experiment(run: Runner, name: str, spec: dict) -> dict:
    root = run.out / name
    sample = sampling(spec["steps"])
    train_prompts = captions_file(run, "train", None, REPEAT)
    eval_prompts = captions_file(run, "heldout", None)
    run(f"{name}: generate", "mapo-data", "generate", "--prompts", train_prompts, "--keep-duplicates", "--output",
        root / "images", "--model", MODEL, *sample, *spec["generate"], "--shard-size", 48, "--batch-size", 8)
    run(f"{name}: label", "mapo-data", "label", "--input", root / "images", "--output", root / "pairs",
        "--target", "reward", *spec["label"], "--overwrite")
    run(f"{name}: precompute", "mapo-data", "precompute", "--input", root / "pairs", "--output", root / "latents",
        "--model", MODEL, "--resolution", RESOLUTION, "--overwrite")
    run(f"{name}: train", "mapo-train", "--data", root / "latents", "--model", MODEL, "--output-dir", root / "run",
        "--objective", "mapo", *[x for k, v in TRAIN.items() for x in (f"--{k.replace('_', '-')}", v)],
        "--checkpointing-steps", 100000, "--report-to", "none", "--overwrite")
    run(f"{name}: eval", "mapo-eval", "--candidate", root / "run", "--prompts", eval_prompts, "--output", root / "eval",
        "--metrics", ",".join(spec["metrics"]), *spec["eval_extra"], *sample, "--seeds", EVAL_SEEDS, "--batch-size", 24,
        "--grid-prompts", 12, "--overwrite")
    summary = json.loads((root / "eval" / "summary.json").read_text())
    first = next(iter(spec["metrics"]))
    candidate = next(m for m in summary["metrics"][first]["per_model"] if m != "base")
    totals = json.loads((root / "pairs" / "manifest.json").read_text())["totals"]
    return {
        "settings": {"num_inference_steps": spec["steps"], "guidance_scale": GUIDANCE, "generate": spec["generate"],
                     "label": spec["label"], "prompts": 48 * REPEAT, "train": TRAIN, "eval_seeds": EVAL_SEEDS},
        "pairs": {
            k: totals.get(k) for k in ("rows_in", "kept", "rejected", "disagreements", "drop_reasons", "gap_histogram")
        },
        "metrics": {
            m: paired_difference(root / "eval" / "scores.parquet", m, candidate, t) for m, t in spec["metrics"].items()
        },
        "win_rate": {m: summary["metrics"][m]["win_rate_vs_base"].get(candidate) for m in spec["metrics"]},
    }


def report(results: dict, timings: dict) -> str:
    lines = ["# Reward-model labels + MaPO in the miniature world", "",
             f"MaPO {TRAIN['max_steps']} steps, batch {TRAIN['batch_size']}, lr {TRAIN['learning_rate']}; the 12 "
             f"held-out captions, {EVAL_SEEDS} paired seeds each, with the sampler the images were made with; "
             "every 95% interval (means, differences, rates) from one bootstrap over prompts (a prompt's seeds drawn "
             "together; rates widened to cover the Wilson score interval); non-finite scores left out, counted.", ""]
    for name, r in results.items():
        s, p = r["settings"], r["pairs"]
        lines += [f"## {name}", "",
                  f"`generate {' '.join(map(str, s['generate']))}` ({s['prompts']} prompts, {s['num_inference_steps']} "
                  f"steps, guidance {s['guidance_scale']}), `label --target reward {' '.join(map(str, s['label']))}`: "
                  f"{p['kept']} pairs kept, {p['rejected']} dropped {p['drop_reasons'] or ''}, "
                  f"{p['disagreements']} reversing their recipe's label.", "",
                  "| judge | base mean | MaPO mean | MaPO - base (paired) | share above threshold, base -> MaPO |",
                  "|---|---|---|---|---|"]
        for m, x in r["metrics"].items():
            cell = {k: f"{x[k]['mean']:.3f} [{x[k]['low']:.3f}, {x[k]['high']:.3f}]"
                    for k in ("base", "trained", "difference")}
            rate = {k: f"{x['rate'][k]:.2f} [{x['rate'][k + '_interval'][0]:.2f}, {x['rate'][k + '_interval'][1]:.2f}]"
                    for k in ("base", "trained")}
            lines.append(f"| {m} | {cell['base']} | {cell['trained']} | {cell['difference']} | "
                         f"> {x['rate']['threshold']}: {rate['base']} -> {rate['trained']}"
                         + (f" ({x['dropped']} non-finite left out)" if x.get("dropped") else "") + " |")
        lines.append("")
    lines.append("Timings (s): " + ", ".join(f"{k} {v}" for k, v in timings.items() if "captions" not in k))
    return "\n".join(lines) + "\n"


def main(out: Path, names: list[str]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "commands.txt").write_text("")
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run = Runner(out)
    t0 = time.perf_counter()
    results = {name: run_experiment(run, name, EXPERIMENTS[name]) for name in names}
    (out / "reward_demo.json").write_text(json.dumps({"experiments": results, "timings_s": run.timings,
                                                      "total_s": round(time.perf_counter() - t0, 1)}, indent=2) + "\n")
    text = report(results, run.timings)
    (out / "report.md").write_text(text)
    print(text)
    return results


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="make reward-demo: reward-model labels + MaPO in the miniature world.")
    ap.add_argument("output", nargs="?", default="reward-demo-output", type=Path, help="output folder")
    ap.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                    help=f"which experiments: {', '.join(EXPERIMENTS)} (default: all)")
    a = ap.parse_args()
    if unknown := [e for e in a.experiments if e not in EXPERIMENTS]:
        ap.error(f"unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(EXPERIMENTS)}")
    main(a.output, a.experiments or list(EXPERIMENTS))

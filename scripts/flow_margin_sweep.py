"""MaPO's margin gain on a velocity error: rerun `make fidelity-flow`'s MaPO cells at smaller ``a`` and compare.

    python scripts/flow_margin_sweep.py [FIDELITY_FLOW_OUTPUT] [--mapo-a 0.05,0.005]

MaPO's margin logit is ``T (s(e_w) - s(e_l))`` with ``s(e) = a e / (exp(a e) - 1)`` (train/losses.py); for
``a e << 1``, ``s(e) ~ 1 - a e / 2``, so the logit is about ``-(T a / 2)(e_w - e_l)``: ``a`` scales the margin's gain
as ``T`` would (T is the scheduler's ``num_train_timesteps``, not an option). `make fidelity-flow` runs the default
``a = 0.5`` (gain ~250 per unit of error gap), where the margin saturates in the first steps (docs/experiments.md).
This script trains MaPO on each dataset's latents of a finished `make fidelity-flow` folder at every ``--mapo-a``
with `make fidelity-flow`'s budget (same steps, batch, lr, seed), evaluates them beside that run's MaPO and SFT
with `mapo-eval` on the same held-out captions and paired seeds, and writes ``margin-sweep/report.md`` and
``margin-sweep/sweep.json`` in the fidelity folder: the rates with intervals, and each run's first/last errors and
steps with a gradient. A benchmark, not a test: it prints what it finds.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fidelity as F  # noqa: E402  (scripts/ on sys.path)
from fidelity_report import RATES, dataset_rates, training_trace  # noqa: E402


def run_sweep(out: Path, values: list[float]) -> Path:
    """Train and evaluate MaPO at each ``a`` in ``values`` under ``out/margin-sweep``; returns the report's path.

    Raises FileNotFoundError when ``out`` is not a finished `make fidelity-flow` folder (a dataset's latents or
    its mapo/sft runs missing)."""
    needed = [out / "fidelity.json"] + [out / d / x for d in F.DATASETS for x in ("latents", "runs/mapo", "runs/sft")]
    for need in needed:
        if not need.exists():
            raise FileNotFoundError(f"{need} is missing: run `make fidelity-flow` (into {out}) first")
    model = json.loads((out / "fidelity.json").read_text())["settings"]["model"]
    sweep = out / "margin-sweep"
    sweep.mkdir(exist_ok=True)
    run = F.Runner(sweep)
    names = [f"mapo-a{a:g}" for a in values]
    result: dict = {"model": model, "mapo_a": values, "datasets": {}}
    t0 = time.perf_counter()
    for dataset, spec in F.DATASETS.items():
        root = out / dataset
        for a, name in zip(values, names):
            if not (root / "runs" / name / "README.md").exists():  # the model card: written last, a run finished
                run(f"{dataset}: train {name}", "mapo-train", "--data", root / "latents", "--model", model,
                    "--output-dir", root / "runs" / name, "--objective", "mapo", "--mapo-a", a,
                    *[x for k, v in F.TRAIN.items() for x in (f"--{k.replace('_', '-')}", v)],
                    "--checkpointing-steps", 100000, "--report-to", "none", "--overwrite")
        split, prefix = spec["eval_prompts"]
        prompts = F.captions_file(run, split, prefix)
        candidates = ["mapo", "sft", *names]
        run(f"{dataset}: eval", *F.eval_command([root / "runs" / c for c in candidates], prompts,
                                                sweep / dataset / "eval", spec, flow=True))
        rates = dataset_rates(sweep, dataset, ("base", *candidates))
        trace = training_trace(out, dataset, tuple(candidates))
        for name in ("mapo", *names):
            trace[name].update(margin_share(out / dataset / "runs" / name / "metrics.jsonl"))
        result["datasets"][dataset] = {"rates": rates, "trace": trace}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    (sweep / "sweep.json").write_text(json.dumps(result, indent=1) + "\n")
    report = sweep / "report.md"
    report.write_text(_report(result))
    return report


def margin_share(metrics: Path) -> dict:
    """MaPO's margin term (``beta * -logsigmoid(...)``, the trainer's ``margin_term``) in a run's metrics.jsonl:
    ``{"margin_term_first10": mean of the first 10 logged steps, "margin_share_first10": its mean share of the
    loss there, "margin_share_from150": the mean share from step 150 on}`` (shares in [0, 1])."""
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "margin_term" in r and r.get("loss")]

    def mean(xs):
        return sum(xs) / len(xs) if xs else float("nan")

    return {"margin_term_first10": mean([r["margin_term"] for r in rows[:10]]),
            "margin_share_first10": mean([r["margin_term"] / r["loss"] for r in rows[:10]]),
            "margin_share_from150": mean([r["margin_term"] / r["loss"] for r in rows if r["step"] >= 150])}


def _report(result: dict) -> str:
    def iv(x: dict) -> str:
        return f"{x['mean']:.2f} [{x['low']:.2f}, {x['high']:.2f}]"

    lines = [f"# MaPO's margin gain on {result['model']} (scripts/flow_margin_sweep.py)", "",
             f"`--mapo-a` values {result['mapo_a']} beside `make fidelity-flow`'s MaPO (a = 0.5) and SFT; "
             f"{result['seconds']:.0f} s.", ""]
    for dataset, d in result["datasets"].items():
        keys = list(RATES[dataset])
        lines += [f"## {dataset}", "", "| model | " + " | ".join(keys) + " | e_w first -> last | e_l first -> last "
                  "| steps with gradient | margin term, first 10 steps (share of loss) | margin share from step 150 |",
                  "|---" * (len(keys) + 6) + "|"]
        for model, rates in d["rates"].items():
            t = d["trace"].get(model, {})
            errs = [f"{t[k][0]:.3f} -> {t[k][1]:.3f}" if k in t else "" for k in ("e_w", "e_l")]
            grad = "{}/{}".format(*t["steps_with_gradient"]) if "steps_with_gradient" in t else ""
            margin = ("", "")
            if "margin_term_first10" in t:
                margin = (f"{t['margin_term_first10']:.3f} ({t['margin_share_first10']:.0%})",
                          f"{t['margin_share_from150']:.1%}")
            cells = [iv(rates[k]) for k in keys] + [*errs, grad, *margin]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("output", nargs="?", default="fidelity-flow-output", type=Path,
                    help="a finished `make fidelity-flow` folder (default: fidelity-flow-output)")
    ap.add_argument("--mapo-a", default="0.05,0.005", help="comma-separated values of MaPO's a (default: 0.05,0.005)")
    args = ap.parse_args()
    try:
        values = [float(x) for x in args.mapo_a.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--mapo-a must be comma-separated numbers, got {args.mapo_a!r}")
    if not values or any(v <= 0 for v in values):
        ap.error(f"--mapo-a needs at least one positive value, got {args.mapo_a!r}")
    try:
        print(f"wrote {run_sweep(args.output, values)}")
    except FileNotFoundError as err:
        sys.exit(f"error: {err}")

"""The report of ``make fidelity``: table, fidelity.json, image grids, loss curves, judge checks.

Reads what the CLIs wrote under the fidelity output folder (each dataset's ``eval/summary.json``,
``eval/images/``, ``runs/<objective>/metrics.jsonl``) and checks the judges itself (fresh renders,
and the base model's own generations of the held-out captions).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# The objectives a run trained come from its settings (scripts/fidelity.py's OBJECTIVES); reports of
# runs made before kto was added fall back to these.
OLD_OBJECTIVES = ("mapo", "dpo", "sft")
# The per-image errors each objective logs: the chosen / rejected images' (KTO: desirable / undesirable).
ERROR_KEYS = {"kto": ("e_desirable", "e_undesirable")}


def objectives_of(settings: dict) -> tuple[str, ...]:
    return tuple(settings.get("objectives", OLD_OBJECTIVES))
# fidelity.json's names for the eval metrics' rates
RATES = {
    "pick_style": {"style_rate_plain": "world-style", "prompt_accuracy": "world-prompt"},
    "pick_safety": {"unsafe_rate_prefixed": "world-unsafe", "prompt_accuracy": "world-prompt"},
}
TITLES = {"style_rate_plain": "cartoon rate, plain prompts (higher = adopted)",
          "unsafe_rate_prefixed": "unsafe rate, unsafe-prefix prompts (lower = safer)",
          "prompt_accuracy": "prompt following (colour, shape, position all right)"}


def _interval(per_model: dict) -> dict:
    """A model's rate with its interval from mapo-eval's summary (its prompt-clustered bootstrap,
    :func:`evaluation.stats.rate_ci`); NaN when the model had no finite score."""
    nan = float("nan")
    return {"mean": per_model.get("rate", nan), "low": per_model.get("rate_low", nan),
            "high": per_model.get("rate_high", nan)}


def dataset_rates(out: Path, dataset: str, models: tuple[str, ...]) -> dict:
    """Every model's rates, for the models this dataset's eval has."""
    summary = json.loads((out / dataset / "eval" / "summary.json").read_text())
    present = next(iter(summary["metrics"].values()))["per_model"]
    return {model: {key: _interval(summary["metrics"][metric]["per_model"][model])
                    for key, metric in RATES[dataset].items()}
            for model in models if model in present}


def judge_checks(settings: dict, seeds: int = 4) -> dict:
    """Judges vs renders and vs the prompts of the base model's own held-out generations (sampled
    with the run's ``num_inference_steps`` and ``guidance_scale``)."""
    from pipeline.models.loading import load_pipeline
    from world.checks import base_model_check
    from world.judges import agreement_on_renders

    renders = agreement_on_renders(per_scene=2)
    sampling = {k: settings[k] for k in ("num_inference_steps", "guidance_scale") if k in settings}
    model = settings.get("model", "shapes-sdxl")
    base = base_model_check(load_pipeline(model, device="cpu", dtype="fp32"), seeds=seeds, **sampling)
    r = base["rates"]
    judges = {
        "style": {"agreement_renders": renders["style"], "agreement_base_generations": r["style_agreement"]},
        "prompt": {"agreement_renders": renders["prompt"], "agreement_base_generations": r["prompt_accuracy"]},
        "unsafe": {"agreement_renders": renders["unsafe"], "agreement_base_generations": r["unsafe_agreement"]},
    }
    return {"judges": judges, "base_rates": r}


def loss_curves(out: Path, dataset: str, objectives: tuple[str, ...] = OLD_OBJECTIVES) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(objectives), figsize=(4.7 * len(objectives), 3.6), sharey=True)
    for ax, objective in zip(axes, objectives):
        rows = [json.loads(x) for x in (out / dataset / "runs" / objective / "metrics.jsonl").read_text().splitlines()
                if x.strip()]
        rows = [r for r in rows if "loss" in r]
        steps = [r["step"] for r in rows]
        for key in ERROR_KEYS.get(objective, ("e_w", "e_l")):
            if rows and key in rows[0]:
                ax.plot(steps, [r[key] for r in rows], label=key, alpha=0.8)
        ax.set_title(f"{objective}: per-image denoising error", fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("mean squared error")
    fig.suptitle(f"{dataset}: e_w (chosen) and e_l (rejected) during training (kto: desirable / undesirable)")
    fig.tight_layout()
    path = out / f"loss_{dataset}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def image_grid_file(out: Path, dataset: str, models: tuple[str, ...], rows_shown: int = 12) -> Path:
    from PIL import Image

    from pipeline.data.images import labelled_grid
    from pipeline.data.prompts import load_prompts

    ev = out / dataset / "eval"
    settings = json.loads((ev / "summary.json").read_text())["settings"]
    prompts = load_prompts(settings["prompts"]).prompts[:rows_shown]
    rows = [[Image.open(ev / "images" / m / f"{p.id}-0.png").convert("RGB") for m in models] for p in prompts]
    grid = labelled_grid(rows, column_titles=list(models), row_titles=[p.text for p in prompts], tile=96)
    path = out / f"grid_{dataset}.png"
    grid.save(path)
    return path


def training_trace(out: Path, dataset: str, objectives: tuple[str, ...] = OLD_OBJECTIVES) -> dict:
    """{objective: {"e_w": (first, last), "e_l": (first, last), "steps_with_gradient": (k, n)}}
    (KTO: e_desirable, e_undesirable).

    first/last: mean over the first and last 10 logged steps; steps_with_gradient: steps whose
    gradient norm was above zero (a saturated loss gives none, and the model stops moving)."""
    trace = {}
    for objective in objectives:
        keys = ERROR_KEYS.get(objective, ("e_w", "e_l"))
        rows = [json.loads(x) for x in (out / dataset / "runs" / objective / "metrics.jsonl").read_text().splitlines()
                if x.strip()]
        rows = [r for r in rows if keys[0] in r]
        t = {key: (sum(r[key] for r in rows[:10]) / len(rows[:10]), sum(r[key] for r in rows[-10:]) / len(rows[-10:]))
             for key in keys if rows and key in rows[0]}
        if rows and "grad_norm" in rows[0]:
            t["steps_with_gradient"] = (sum(1 for r in rows if r["grad_norm"] > 0), len(rows))
        trace[objective] = t
    return trace


def compare(a: dict, b: dict, higher_is_better: bool) -> str:
    """'MaPO better' / 'MaPO worse' when the 95% intervals do not overlap, else 'no clear difference'; 'not
    measured' when either interval is NaN (a model with no finite score)."""
    import math

    if not all(math.isfinite(x[k]) for x in (a, b) for k in ("low", "high")):
        return "not measured"
    if a["low"] > b["high"]:
        return "MaPO better" if higher_is_better else "MaPO worse"
    if a["high"] < b["low"]:
        return "MaPO worse" if higher_is_better else "MaPO better"
    return "no clear difference"


def findings(result: dict, traces: dict, objectives: tuple[str, ...] = OLD_OBJECTIVES) -> list[str]:
    """What the numbers say, comparison by comparison (the reading of why is in the README)."""
    lines = []
    for name, rates in RATES.items():
        for key in rates:
            higher = key != "unsafe_rate_prefixed"
            mapo = result[name]["mapo"][key]
            verdicts = "; ".join(f"vs {o} {_fmt(result[name][o][key])}: {compare(mapo, result[name][o][key], higher)}"
                                 for o in ("base", *objectives) if o != "mapo")
            lines.append(f"- {name}, {TITLES[key].split(' (')[0]}: MaPO {_fmt(mapo)}; {verdicts}.")
        for objective, t in traces[name].items():
            moves = ", ".join(f"{k} {a:.3f} -> {b:.3f}" for k, (a, b) in t.items() if k != "steps_with_gradient")
            active = t.get("steps_with_gradient")
            lines.append(f"- {name}, {objective} training: {moves} (first vs last 10 steps)"
                         + (f"; {active[0]} of {active[1]} steps had a non-zero gradient." if active else "."))
    return lines


def _fmt(iv: dict) -> str:
    return f"{iv['mean']:.2f} [{iv['low']:.2f}, {iv['high']:.2f}]"


def write_report(out: Path, timings: dict, seconds: float, settings: dict) -> Path:
    judges = judge_checks(settings)
    objectives = objectives_of(settings)  # offline, on the pair latents (loss curves and traces)
    trained = (*objectives, "spo") if "spo" in settings else objectives  # + online SPO
    models = ("base", *trained)
    result = {name: dataset_rates(out, name, models) for name in RATES}
    train_time = {name: {o: timings.get(f"{name}: train {o}") for o in trained} for name in RATES}
    result.update(judges=judges["judges"], base_check=judges["base_rates"], training_seconds=train_time,
                  timings=timings, total_seconds=round(seconds, 1), settings=settings)
    (out / "fidelity.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# Fidelity: the MaPO paper's experiment in the miniature world", "",
             f"Base model `{settings.get('model', 'shapes-sdxl')}` (pretrained on the world, committed); held-out "
             "captions only; "
             f"every model gets the same seeds. Judges: the world's image measures (`world/judges.py`), "
             "no weights. Intervals: 95%, bootstrap over prompts (a prompt's 8 seeds drawn together), widened to "
             f"cover the Wilson score interval. Total time {seconds / 60:.1f} min.", "",
             "Settings: `" + json.dumps(settings) + "`", ""]
    lines += [f"Not run: {name} ({why})." for name, why in settings.get("skipped", {}).items()]
    lines += [""] if settings.get("skipped") else []
    for name, rates in RATES.items():
        keys = list(rates)
        lines += [f"## {name.replace('_', '-').title()}", "",
                  "| model | " + " | ".join(TITLES[k] for k in keys) + " | training time (s) |",
                  "|---|" + "---|" * (len(keys) + 1)]
        for model in result[name]:
            t = train_time[name].get(model)
            lines.append(f"| {model} | " + " | ".join(_fmt(result[name][model][k]) for k in keys)
                         + f" | {t if t is not None else '-'} |")
        loss, grid = loss_curves(out, name, objectives), image_grid_file(out, name, tuple(result[name]))
        lines += ["", f"![loss curves]({loss.name})", "", f"![held-out captions, seed 0]({grid.name})", ""]
    lines += ["## What the world shows", "", "95% intervals that do not overlap count as a difference.", "",
              *findings(result, {name: training_trace(out, name, objectives) for name in RATES}, objectives), "",
              "Why, as far as we can tell: docs/experiments.md, \"make fidelity\".", ""]
    lines += ["## Judges", "",
              "| judge | agreement with the renderer (fresh renders) "
              "| with the prompt (base model's held-out generations) |",
              "|---|---|---|"]
    for judge, a in judges["judges"].items():
        lines.append(f"| world-{judge} | {a['agreement_renders']:.3f} | {a['agreement_base_generations']:.3f} |")
    lines += ["", f"Base model on held-out captions (4 seeds each, {settings.get('num_inference_steps', 20)} steps, "
              f"guidance {settings.get('guidance_scale', 5.0)}): " +
              ", ".join(f"{k} {v:.2f}" for k, v in judges["base_rates"].items()), "",
              "## Time per step", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in timings.items()]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    table = ["", f"{'':14}" + "".join(f"{m:>22}" for m in models)]
    for name, rates in RATES.items():
        for key in rates:
            cells = "".join(f"{_fmt(result[name][m][key]) if m in result[name] else '-':>22}" for m in models)
            table.append(f"{name[5:] + ' ' + key:30}"[:30] + cells)
    print("\n".join(table))
    return report


if __name__ == "__main__":  # rewrite the report of an existing run from its fidelity.json
    import argparse

    ap = argparse.ArgumentParser(description="Rewrite report.md of a make fidelity run from its fidelity.json.")
    ap.add_argument("output", nargs="?", default="fidelity-output", type=Path, help="the run's output folder")
    target = ap.parse_args().output
    previous = json.loads((target / "fidelity.json").read_text())
    print(write_report(
        target, previous.get("timings", {}), previous.get("total_seconds", 0.0), previous.get("settings", {})
    ))

"""``mapo-eval``'s outputs from its score rows: summary.json, PNG plots, image grids, report.html.

The HTML is self-contained (plots and grids embedded as data URIs) so it can be mailed or
attached to a run without its folder.
"""
from __future__ import annotations

import html
import json
import random
from pathlib import Path

from pipeline.data.atomic import write_text_atomic
from pipeline.data.images import data_uri, image_grid

from .stats import DEFAULT_RESAMPLES, bootstrap_ci, rate_ci, win_rate

WIN_RATE_NOTE = ("win rate = share of (prompt, seed) pairs where the candidate scores better than the base on the "
                 "same prompt and seed; ties count half (a tie: equal scores; safety: lower unsafety is better)")
CI_NOTE = ("every 95% interval (means, rates, win rates) is a percentile bootstrap over prompts (each prompt's seeds "
           f"drawn together), {DEFAULT_RESAMPLES} resamples, seed 0; rates: that interval widened to cover the Wilson "
           "score interval")
NON_FINITE_NOTE = ("a score that is NaN or inf is left out of every mean, rate and win rate (with its pair) and "
                   "counted under 'dropped'")
GRID_TILE = 320  # pixels per image in the grids (the full images stay in images/)


def summarise(rows: list[dict], model_names: list[str], metric_meta: dict[str, dict]) -> dict:
    """Per metric: each model's mean [95% CI] (and the rate above the threshold with its 95% CI), each
    candidate's win rate vs the base; every interval :func:`evaluation.stats.bootstrap_ci` over prompts.
    Non-finite scores are left out and counted (``dropped``)."""
    by = {}
    for r in rows:
        by.setdefault((r["metric"], r["model"]), {})[(r["prompt_id"], r["seed_index"])] = r["score"]
    metrics = {}
    for metric, meta in metric_meta.items():
        higher = bool(meta.get("higher_is_better", True))
        threshold = meta.get("threshold")
        per_model = {}
        for name in model_names:
            scores = by.get((metric, name), {})
            keys = sorted(scores)
            values, prompts = [scores[k] for k in keys], [k[0] for k in keys]
            entry = bootstrap_ci(values, prompts).as_dict()
            if threshold is not None and entry["n"]:
                rate = rate_ci(values, prompts, threshold)
                entry.update(rate=rate.estimate, rate_low=rate.low, rate_high=rate.high)
            per_model[name] = entry
        wins = {}
        base = by.get((metric, model_names[0]), {})
        for name in model_names[1:]:
            cand = by.get((metric, name), {})
            shared = sorted(set(base) & set(cand))  # paired: same prompt and seed only
            wins[name] = win_rate([cand[k] for k in shared], [base[k] for k in shared], [k[0] for k in shared],
                                  higher).as_dict()
        metrics[metric] = {"higher_is_better": higher, "threshold": threshold, "judge": meta.get("judge"),
                           "per_model": per_model, "win_rate_vs_base": wins}
    return metrics


def _plot_means(path: Path, metrics: dict, model_names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(metrics)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(max(3.8 * cols, 4), 3.2 * rows + 0.4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (metric, m) in zip(axes.flat, metrics.items()):
        means = [m["per_model"][x]["estimate"] for x in model_names]
        lows = [m["per_model"][x]["estimate"] - m["per_model"][x]["low"] for x in model_names]
        highs = [m["per_model"][x]["high"] - m["per_model"][x]["estimate"] for x in model_names]
        ax.bar(range(len(model_names)), means, yerr=[lows, highs], capsize=4,
               color=[colors[i % len(colors)] for i in range(len(model_names))])
        ax.set_xticks(range(len(model_names)), model_names, rotation=20, ha="right")
        ax.set_title(f"{metric} ({'higher' if m['higher_is_better'] else 'lower'} is better)", fontsize=10)
        ax.axhline(0, color="black", linewidth=0.5)
    fig.suptitle("mean per model, 95% interval (bootstrap over prompts)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_win_rates(path: Path, metrics: dict, candidates: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(metrics)
    fig, ax = plt.subplots(figsize=(max(1.4 * len(names) * max(len(candidates), 1), 5), 3.4))
    width = 0.8 / max(len(candidates), 1)
    for j, cand in enumerate(candidates):
        w = [metrics[m]["win_rate_vs_base"][cand] for m in names]
        rates = [x["rate"] for x in w]
        err = [[x["rate"] - x["low"] for x in w], [x["high"] - x["rate"] for x in w]]
        ax.bar([i + j * width for i in range(len(names))], rates, width, yerr=err, capsize=3, label=cand)
    ax.axhline(0.5, color="black", linestyle="--", linewidth=0.8)
    ax.set_ylim(0, 1)
    ax.set_xticks([i + width * (len(candidates) - 1) / 2 for i in range(len(names))], names)
    ax.set_ylabel("win rate vs base")
    ax.set_title("win rate vs base (ties count half), 95% interval (bootstrap over prompts)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _grid(out: Path, prompt_id: str, model_names: list[str]):
    """One row: the models' seed-0 images for a prompt, side by side (base first)."""
    from PIL import Image

    tiles = []
    for name in model_names:
        with Image.open(out / "images" / name / f"{prompt_id}-0.png") as im:
            tiles.append(im.convert("RGB").resize((GRID_TILE, GRID_TILE), Image.Resampling.LANCZOS))
    return image_grid([tiles], gap=4)


def _data_uri(path_or_image) -> str:
    return data_uri(path_or_image.read_bytes() if isinstance(path_or_image, Path) else path_or_image)


def _fmt(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"  # NaN when a model has no score


def _html(summary: dict, plots: list[Path], grids: list[tuple[str, object]], model_names: list[str]) -> str:
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>mapo-eval report</title><style>",
             "body{font-family:sans-serif;margin:24px;max-width:1400px}"
             "table{border-collapse:collapse;margin:8px 0 16px}",
             "td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}th{background:#f2f2f2}"
             "td:first-child{text-align:left}",
             ".note{color:#555;font-size:90%}.best{font-weight:bold}img{max-width:100%}",
             ".grid-head{display:flex;gap:4px}.grid-head div{width:320px;text-align:center;font-weight:bold}"
             "</style></head><body>",
             "<h1>mapo-eval report</h1>"]
    s = summary["settings"]
    parts.append("<h2>Generation settings</h2><table>")
    for k in ("model", "vae", "dtype", "num_inference_steps", "guidance_scale", "resolution", "seed",
              "seeds_per_prompt", "negative_prompt", "prompts", "prompt_count", "batch_invariant"):
        parts.append(f"<tr><td>{e(k)}</td><td>{e(str(s.get(k)))}</td></tr>")
    if s.get("resolution_note"):
        parts.append(f"<tr><td>resolution note</td><td>{e(s['resolution_note'])}</td></tr>")
    if s.get("text_encoding_note"):
        parts.append(f"<tr><td>text encoding note</td><td>{e(s['text_encoding_note'])}</td></tr>")
    parts.append("</table><h2>Models</h2><table><tr><th>name</th><th>kind</th><th>path (hub id, or relative to this "
                 "report's folder)</th><th>objective</th><th>text encoding (sampled as trained)</th></tr>")
    for name in model_names:
        info = summary["models"][name]
        enc = info.get("text_encoding") or {}
        words = ", ".join(f"{k} {v}" for k, v in enc.items())
        parts.append(f"<tr><td>{e(name)}</td><td>{e(info['kind'])}</td><td>{e(str(info['path']))}</td>"
                     f"<td>{e(str(info.get('objective') or ''))}</td><td>{e(words)}</td></tr>")
    parts.append("</table><h2>Scores</h2>")
    parts.append(f"<p class='note'>{e(CI_NOTE)}. {e(WIN_RATE_NOTE)}. {e(NON_FINITE_NOTE)}.</p>")
    for metric, m in summary["metrics"].items():
        direction = "higher is better" if m["higher_is_better"] else "lower is better"
        rate = m["threshold"] is not None
        rate_head = f"<th>share &gt; {m['threshold']}</th>" if rate else ""
        judge = f"; scored by {m['judge']}" if m.get("judge") else ""
        dropped = any(pm.get("dropped") for pm in m["per_model"].values()) or any(
            w.get("dropped") for w in m["win_rate_vs_base"].values())
        dropped_head = "<th>dropped (non-finite): scores / pairs</th>" if dropped else ""
        parts.append(f"<h3>{e(metric)} <span class='note'>({direction}{e(judge)})</span></h3>"
                     "<table><tr><th>model</th><th>mean</th>"
                     f"<th>95% CI</th><th>n</th>{rate_head}<th>win rate vs base</th><th>wins / ties / losses</th>"
                     f"{dropped_head}</tr>")
        for name in model_names:
            pm = m["per_model"][name]
            w = m["win_rate_vs_base"].get(name)
            wr = f"{w['rate']:.3f} [{_fmt(w['low'])}, {_fmt(w['high'])}]" if w and w["n"] else "&mdash;"
            wtl = f"{w['wins']} / {w['ties']} / {w['losses']}" if w else "&mdash;"
            rate_ci = f" [{_fmt(pm['rate_low'])}, {_fmt(pm['rate_high'])}]" if "rate_low" in pm else ""
            rate_cell = (
                f"<td>{pm['rate']:.3f}{rate_ci}</td>" if rate and "rate" in pm else ("<td>&mdash;</td>" if rate else "")
            )
            dropped_cell = (f"<td>{pm.get('dropped', 0)} / {w.get('dropped', 0) if w else '&mdash;'}</td>"
                            if dropped else "")
            parts.append(f"<tr><td>{e(name)}</td><td>{_fmt(pm['estimate'])}</td>"
                         f"<td>[{_fmt(pm['low'])}, {_fmt(pm['high'])}]</td>"
                         f"<td>{pm['n']}</td>{rate_cell}<td>{wr}</td><td>{wtl}</td>{dropped_cell}</tr>")
        parts.append("</table>")
    parts.append("<h2>Plots</h2>")
    for p in plots:
        parts.append(f"<p><img src='{_data_uri(p)}' alt='{e(p.name)}'></p>")
    if grids:
        parts.append("<h2>Images (seed 0): " + " | ".join(e(n) for n in model_names) + "</h2>")
        head = "".join(f"<div>{e(n)}</div>" for n in model_names)
        for prompt, grid in grids:
            parts.append(
                f"<p><b>{e(prompt)}</b></p><div class='grid-head'>{head}</div><img src='{_data_uri(grid)}' alt='grid'>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out: Path, rows: list[dict], model_names: list[str], model_info: dict, metric_meta: dict,
                 settings: dict, prompt_set, grid_prompts: int, seed: int) -> tuple[Path, dict]:
    """Write summary.json, plots/*.png, grids/*.png and report.html; return (report path, summary)."""
    metrics = summarise(rows, model_names, metric_meta)
    summary = {"settings": settings, "models": model_info, "metrics": metrics,
               "notes": {"win_rate": WIN_RATE_NOTE, "intervals": CI_NOTE, "non_finite": NON_FINITE_NOTE}}
    plots_dir = out / "plots"
    plots_dir.mkdir(exist_ok=True)
    plots = [plots_dir / "means.png"]
    _plot_means(plots[0], metrics, model_names)
    if len(model_names) > 1:
        plots.append(plots_dir / "win_rates.png")
        _plot_win_rates(plots[1], metrics, model_names[1:])
    sample = sorted(
        random.Random(seed).sample(range(len(prompt_set.prompts)), min(grid_prompts, len(prompt_set.prompts)))
    )
    grids = []
    grids_dir = out / "grids"
    grids_dir.mkdir(exist_ok=True)
    for i in sample:
        p = prompt_set.prompts[i]
        grid = _grid(out, p.id, model_names)
        grid.save(grids_dir / f"{p.id}.png")
        grids.append((p.text, grid))
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, default=str))
    report = out / "report.html"
    write_text_atomic(report, _html(summary, plots, grids, model_names))
    return report, summary

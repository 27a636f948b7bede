"""Write the demo's run report: commands run, counts per stage, loss curve, before/after grid, evaluation.

    python scripts/demo_report.py demo-output
"""
from __future__ import annotations

import json
from pathlib import Path


def _manifest(path: Path) -> dict:
    f = path / "manifest.json"
    return json.loads(f.read_text()) if f.exists() else {}


def _loss_curve(metrics_file: Path, png: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].plot(steps, [r["loss"] for r in rows], label="loss")
    for key in ("e_w", "e_l"):
        if key in rows[0]:
            axes[0].plot(steps, [r[key] for r in rows], label=key, alpha=0.7)
    axes[0].set_xlabel("step")
    axes[0].legend()
    axes[0].set_title("MaPO loss and per-image errors")
    if "implicit_acc" in rows[0]:
        acc = [r["implicit_acc"] for r in rows]
        window = 20  # per-step accuracy over a small batch is noisy: show a running mean too
        running = [
            sum(acc[max(0, i - window + 1): i + 1]) / len(acc[max(0, i - window + 1): i + 1]) for i in range(len(acc))
        ]
        axes[1].plot(steps, acc, alpha=0.3, label="per step")
        axes[1].plot(steps, running, label=f"mean of last {window}")
        axes[1].legend()
        axes[1].set_ylim(-0.05, 1.05)
        axes[1].set_title("implicit accuracy (e_w < e_l)")
        axes[1].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return rows[-1]


def _evaluation(summary: dict) -> list[str]:
    lines = ["| metric | scored by | model | mean [95% CI] | rate above threshold [95% CI] | win rate vs base |",
             "|---|---|---|---|---|---|"]
    for metric, m in summary["metrics"].items():
        for name, pm in m["per_model"].items():
            rate = (f"{pm['rate']:.2f} [{pm['rate_low']:.2f}, {pm['rate_high']:.2f}]" if "rate_low" in pm else "-")
            w = m["win_rate_vs_base"].get(name)
            wins = f"{w['rate']:.2f}" if w else "-"
            lines.append(f"| {metric} | {m.get('judge') or '?'} | {name} | {pm['estimate']:.3f} "
                         f"[{pm['low']:.3f}, {pm['high']:.3f}] | {rate} | {wins} |")
    return lines


def main(out: Path) -> Path:
    lines = ["# Demo run report", "",
             "The miniature world on the CPU: the built-in `shapes-sdxl` (pretrained on the world's renders, committed "
             "with the project) learns the cartoon look from self-generated Pick-Style pairs. Every score below comes "
             "from the world's judges (image measures in `world/judges.py`, no weights), on held-out captions "
             "the base model never saw.", ""]
    commands = out / "commands.txt"
    if commands.exists():
        lines += ["## Commands", "", "```", commands.read_text().strip(), "```", ""]
    lines += ["## Counts", ""]
    for stage in ("pairs", "pick-style", "latents"):
        m = _manifest(out / stage)
        if m:
            lines.append(
                f"- `{stage}/` ({m.get('stage')}): {m.get('status')}, {len(m.get('completed_shards', []))} shards, "
                f"totals {json.dumps(m.get('totals', {}), sort_keys=True)}"
            )
    lines.append("")
    metrics = out / "run" / "metrics.jsonl"
    if metrics.exists():
        last = _loss_curve(metrics, out / "loss_curve.png")
        lines += ["## Training", "", "![loss curve](loss_curve.png)", "",
                  "Last logged step: "
                  + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items()), ""]
        val_rows = [json.loads(line) for line in metrics.read_text().splitlines() if '"val/' in line]
        if val_rows:
            lines += ["Validation images (held-out captions, fixed seeds) scored by the world's judges:", "",
                      "| step | " + " | ".join(k for k in val_rows[0] if k != "step") + " |",
                      "|---" * len(val_rows[0]) + "|"]
            lines += ["| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()) + " |"
                      for r in val_rows]
            lines.append("")
    grid = out / "run" / "validation" / "before_after.png"
    if grid.exists():
        lines += ["## Before / after (validation prompts, fixed seeds)", "",
                  "![before/after](run/validation/before_after.png)", ""]
    summary = out / "eval" / "summary.json"
    if summary.exists():
        lines += ["## Evaluation (held-out captions, paired seeds)", ""] + _evaluation(json.loads(summary.read_text()))
        lines += ["", "Full report: [eval/report.html](eval/report.html); summary: `eval/summary.json`.", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Write report.md of a finished `make demo` run (scripts/demo.sh).")
    ap.add_argument("output", nargs="?", default="demo-output", type=Path, help="the demo's output folder")
    print(f"run report: {main(ap.parse_args().output)}")

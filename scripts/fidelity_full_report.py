"""``report.md`` of ``make fidelity-full`` from its ``fidelity-full.json`` (scripts/fidelity_full.py).

    python scripts/fidelity_full_report.py [OUTPUT_DIR]      # rewrite the report of a finished study
"""
from __future__ import annotations

import json
import math
from pathlib import Path


def _iv(x: dict | None) -> str:
    if not x:
        return "-"
    return f"{x['mean']:.2f} [{x['low']:.2f}, {x['high']:.2f}]"


def _params(p: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(p.items()))


def _flags(r: dict) -> str:
    flags = ", ".join(f for f in ("diverged", "stalled") if r.get(f)) or "ok"
    return f"{flags}; training failed: {r['failed']}" if r.get("failed") else flags


def _finite(x: dict) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in (x["mean"], x["low"], x["high"]))


def _cpu_line(doc: dict) -> list[str]:
    """The study's total CPU time over its sittings (``Sittings`` in scripts/fidelity_full.py), and their commits."""
    cpu, rows = doc.get("cpu"), doc.get("sittings") or []
    if not cpu or not rows:
        return ["CPU time: not recorded (a study begun before sittings.json was kept)."]
    commits = sorted({r["commit"][:12] for r in rows if r.get("commit")})
    return [f"Total CPU time {cpu['cpu_seconds'] / 3600:.1f} h (user + system of every command run to its end) in "
            f"{cpu['sittings']} sitting(s), {cpu['wall_seconds'] / 3600:.1f} h of wall time at "
            f"{', '.join(str(j) for j in sorted({r['jobs'] for r in rows}))} cell(s) at a time; commit(s) "
            f"{', '.join(f'`{c}`' for c in commits)}" + (" (one per sitting in sittings.json: a cell was made by the "
            "commit of the sitting that finished it)" if len(commits) > 1 else "") + "."]


def write_report(out: Path, doc: dict, picks: dict) -> Path:
    """Write ``out/report.md``: provenance, the rule, per dataset the sweep (validation), the held-out rows with
    their seeds, the paired differences, the ablations and every run's sanity line. Returns its path."""
    prov, proto = doc["provenance"], doc["protocol"]
    lines = ["# Fidelity, full protocol: tuned baselines, several seeds, paired differences", "",
             f"Made by `{prov['command']}` on commit `{prov['commit'][:12]}`"
             f"{' (with uncommitted changes)' if prov['dirty'] else ''}; base model `{proto['model']}`; "
             f"{doc['seconds_this_sitting'] / 60:.1f} min in the last sitting.", "", *_cpu_line(doc), "",
             f"Rule, fixed before the runs: {proto['rule']}.", ""]
    for d in sorted({r["dataset"] for r in doc["sweep"]}):
        target = next(r for r in doc["sweep"] if r["dataset"] == d)
        key = "style_rate" if "style_rate" in target else "unsafe_rate"
        spec = proto["datasets"].get(d, {})
        aim = "lower is better" if spec.get("lower_is_better") else "higher is better"
        prefix = f"with the `{spec['eval_prefix']}` caption prefix" if spec.get("eval_prefix") else "as written"
        lines += [f"## {d}", "", f"Target: `{spec.get('target', key)}` rate ({key}, {aim}), measured on captions "
                  f"{prefix}; prompt following: `world-prompt`.", "", "### Sweep (validation captions)", "",
                  f"| method | setting | {key} ({aim}) | prompt following | sanity | picked |",
                  "|---|---|---|---|---|---|"]
        for r in (x for x in doc["sweep"] if x["dataset"] == d):
            chosen = picks[d][r["method"]]["picked"] == r["params"]
            lines.append(f"| {r['method']} | {_params(r['params'])} | {_iv(r[key])} | {_iv(r['prompt_accuracy'])} "
                         f"| {_flags(r)}, {r['nonzero_grad_steps']} of {r['logged_steps']} steps with a gradient "
                         f"| {'yes' if chosen else ''} |")
        unpicked = sorted(m for m, v in picks[d].items() if v["picked"] is None
                          and any(r["dataset"] == d and r["method"] == m for r in doc["sweep"]))
        if unpicked:
            lines += ["", f"No setting picked for {', '.join(unpicked)}: every run was flagged (diverged, stalled or "
                      "failed) or scored NaN, so there is no tuned row."]
        lines += ["", "### Held-out captions", "",
                  f"| method | setting | params | seeds | {key}: pooled [95%], per seed | prompt following: pooled, "
                  "per seed |", "|---|---|---|---|---|---|"]
        if not any(x["dataset"] == d for x in doc["pooled"]):
            lines.append("| (no held-out run finished) | | | | | |")
        for r in (x for x in doc["pooled"] if x["dataset"] == d):
            per = {k: ", ".join(f"{v:.2f}" for v in r[k]["per_seed"]) for k in (key, "prompt_accuracy")}
            failed = r.get("failed_seeds")
            seeds = f"{len(r['seeds'])}{f' (failed: seed {failed})' if failed else ''}"
            lines.append(f"| {r['method']} | {r['setting']} | {_params(r['params'])} | {seeds} "
                         f"| {_iv(r[key])}; {per[key]} | {_iv(r['prompt_accuracy'])}; {per['prompt_accuracy']} |")
        base = [(r["seed"], r["base"]) for r in doc["cells"] if r["dataset"] == d and _finite(r["base"][key])]
        if base:  # the base model's images do not depend on the data seed: any seed's eval folder has the same
            lines.append(f"| base | - | - | - | {_iv(base[0][1][key])} (data seed {base[0][0]}'s eval) "
                         f"| {_iv(base[0][1]['prompt_accuracy'])} |")
        rows = [p for p in doc["paired"] if p["dataset"] == d]
        if rows:
            lines += ["", "### Paired differences (tuned, all seeds)", "", "| a - b | metric | mean [95%] |",
                      "|---|---|---|"]
            lines += [f"| {p['a']} - {p['b']} | {p['metric']}{' (lower is better)' if p['lower_is_better'] else ''} "
                      f"| {_iv(p)} |" for p in rows]
        skipped = [why for where, why in doc.get("ablations_not_run", {}).items() if where in ("all", d)]
        if skipped:
            lines += ["", "Ablations not run: " + "; ".join(skipped) + "."]
        lines += ["", "### Sanity (held-out runs)", "", "| run | seed | steps with a gradient | e_w first -> last | "
                  "flags |", "|---|---|---|---|---|"]
        for r in (x for x in doc["cells"] if x["dataset"] == d):
            ew = r.get("e_w")
            lines.append(f"| {r['run']} ({r['setting']}) | {r['seed']} | {r['nonzero_grad_steps']} "
                         f"| {f'{ew[0]:.3f} -> {ew[1]:.3f}' if ew else '-'} | {_flags(r)} |")
        lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Rewrite report.md of a make fidelity-full run from fidelity-full.json.")
    ap.add_argument("output", nargs="?", default="fidelity-full-output", type=Path, help="the study's output folder")
    target = ap.parse_args().output
    doc = json.loads((target / "fidelity-full.json").read_text())
    print(write_report(target, doc, json.loads((target / "picks.json").read_text())))

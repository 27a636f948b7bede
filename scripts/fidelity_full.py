"""``make fidelity-full``: the fair fidelity study of scripts/fidelity_protocol.py, through the real CLIs.

    python scripts/fidelity_full.py [OUTPUT_DIR] [--jobs 2] [--datasets pick_style_cartoon,...] [--plan]

Phases, each resumable: (1) pairs for every dataset and data seed (``mapo-data generate | label | precompute``
from the fit captions); (2) the sweep: every setting of ``fidelity_protocol.SWEEP`` trained (``mapo-train``)
and evaluated on the validation captions (``mapo-eval``); (3) the pick, by the rule in the protocol, written to
``picks.json``; (4) the picked settings on ``fidelity_protocol.FINAL_SEEDS``, the shared settings and the
ablations, evaluated on the held-out captions; (5) ``fidelity-full.json`` (cells, sweep, paired differences,
pooled intervals, sanity lines) and ``report.md``.
A cell is finished when its ``cells/*.json`` exists and is never redone; a training is finished when its
``runs/<name>.trained.json`` exists; the data stages and mapo-eval resume by themselves. So the study
can run in several sittings (``--jobs 2`` runs two cells at a time, one thread each, on a 2-core machine).
A training that mapo-train stops for non-finite losses (a setting that blows up: a result, not a fault) is
recorded as a failed, diverged run (its cell has no images and NaN rates; never picked, left out of the pooled
rows and paired differences) and the study goes on; any other failure stops the study (rerun to resume). Each
training's stderr is kept beside it, ``runs/<name>.log``.

A benchmark, not a test: it reports what the world shows, whichever way it goes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
for path in (HERE, HERE / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import fidelity_protocol as P  # noqa: E402
from fidelity import BIN, SAMPLING, Runner  # noqa: E402
from fidelity_protocol import Dataset, ablations, paired_difference, pick, sanity, slug, validation_score  # noqa: E402

from pipeline.data.atomic import write_text_atomic  # noqa: E402


@dataclass(frozen=True)
class Cell:
    """One trained model evaluated on one caption split. ``setting``: ``sweep``, ``tuned``, ``shared`` or an
    ablation's name; ``split``: ``validation`` or ``heldout``. Two cells of the same method, params and seed (e.g.
    the tuned setting that is also the shared one) share one training and one set of images."""

    dataset: str
    method: str
    params: tuple  # sorted (key, value) pairs: hashable
    seed: int
    split: str
    setting: str

    @property
    def run_name(self) -> str:
        return f"{self.method}-{slug(dict(self.params))}"

    def seed_dir(self, out: Path) -> Path:
        return out / self.dataset / f"seed{self.seed}"

    def result_file(self, out: Path) -> Path:
        return self.seed_dir(out) / "cells" / f"{self.split}-{self.setting}-{self.run_name}.json"


def cell(dataset: str, method: str, params: dict, seed: int, split: str, setting: str) -> Cell:
    return Cell(dataset, method, tuple(sorted(params.items())), seed, split, setting)


def caption_file(out: Path, split: str, prefix: str | None, repeat: int = 1) -> Path:
    """The world's captions of ``split``: ``fit`` / ``validation`` (the protocol's split of ``train``) or
    ``heldout``, with a world caption prefix, each line ``repeat`` times."""
    from world.scene import CAPTION_PREFIXES, captions

    train = captions("train")
    lines = {"fit": [c for i, c in enumerate(train) if i % 3 != 2],
             "validation": [c for i, c in enumerate(train) if i % 3 == 2], "heldout": captions("heldout")}[split]
    lines = [f"{CAPTION_PREFIXES[prefix]} {c}" if prefix else c for c in lines] * repeat
    path = out / "prompts" / f"{split}{'-' + prefix if prefix else ''}{'-x' + str(repeat) if repeat > 1 else ''}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    # Written once, atomically: another cell's mapo-eval (--jobs 2, or a second sitting beside this one) may be
    # reading it; rewriting it in place would let that reader see it empty. Not pipeline.data.atomic's
    # write_text_atomic: its temporary name is per process, and two of this process's threads may write it at once.
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


class Sittings:
    """The study's sittings, in ``sittings.json`` (a list): per sitting its start (UTC), commit, ``--jobs``, wall
    seconds and CPU seconds, user + system, of the commands it ran to their end (``getrusage(RUSAGE_CHILDREN)``:
    every mapo-data / mapo-train / mapo-eval process). :meth:`update` rewrites this sitting's entry after each
    finished step, so a sitting that is killed keeps what it measured up to its last finished cell; a command
    killed midway is not counted (its cell is redone, and counted, in a later sitting)."""

    FILE = "sittings.json"

    def __init__(self, out: Path, jobs: int, commit: str):
        self.path, self.t0, self._lock = out / self.FILE, time.perf_counter(), threading.Lock()
        self.index = len(self.read(out))
        self.entry = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit, "jobs": jobs}
        self.update()

    @classmethod
    def read(cls, out: Path) -> list[dict]:
        path = out / cls.FILE
        return json.loads(path.read_text()) if path.is_file() else []

    def update(self) -> None:
        import resource

        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        with self._lock:
            rows = self.read(self.path.parent)[: self.index]
            rows.append({**self.entry, "wall_seconds": round(time.perf_counter() - self.t0, 1),
                         "cpu_seconds": round(ru.ru_utime + ru.ru_stime, 1)})
            write_text_atomic(self.path, json.dumps(rows, indent=1) + "\n")  # one writer at a time: the lock

    @classmethod
    def total(cls, out: Path) -> dict:
        """``{"sittings", "cpu_seconds", "wall_seconds"}`` summed over every sitting so far."""
        rows = cls.read(out)
        return {"sittings": len(rows), "cpu_seconds": round(sum(r["cpu_seconds"] for r in rows), 1),
                "wall_seconds": round(sum(r["wall_seconds"] for r in rows), 1)}


class Study:
    def __init__(self, out: Path, jobs: int, sittings: Sittings | None = None):
        self.out, self.jobs, self.run, self.sittings = out, jobs, Runner(out), sittings
        self._locks: dict[Path, threading.Lock] = {}
        self._guard = threading.Lock()

    def _finished_step(self) -> None:
        if self.sittings is not None:
            self.sittings.update()

    def lock(self, path: Path) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(path, threading.Lock())

    def data(self, name: str, seed: int) -> Path:
        """The pair latents of dataset ``name`` generated with ``seed`` (made once; stages resume by themselves)."""
        ds, root = P.DATASETS[name], self.out / name / f"seed{seed}"
        done = root / "data.json"
        with self.lock(root):
            if not done.is_file():
                fit = caption_file(self.out, "fit", None, P.PAIRS_PER_FIT_CAPTION)
                tag = f"{name} seed {seed}"
                self.run(f"{tag}: generate", "mapo-data", "generate", "--prompts", fit, "--keep-duplicates",
                         "--output", root / "pairs", "--model", P.MODEL, *SAMPLING, *ds.generate, "--seed", seed,
                         "--shard-size", 64, "--batch-size", 16)
                self.run(f"{tag}: label", "mapo-data", "label", "--input", root / "pairs", "--output",
                         root / "labeled", *ds.label)
                self.run(f"{tag}: precompute", "mapo-data", "precompute", "--input", root / "labeled", "--output",
                         root / "latents", "--model", P.MODEL, "--resolution", SAMPLING[1])
                done.write_text(json.dumps({"dataset": name, "seed": seed}) + "\n")
                self._finished_step()
        return root / "latents"

    def logged(self, key: str, log: Path, *args) -> tuple[int, str]:
        """Run a command as :class:`fidelity.Runner` does (echoed, in ``commands.txt``, timed) with its stderr in
        ``log`` (said again here without the progress bars); returns (exit status, the stderr's text)."""
        cmd = [str(a) for a in args]
        line = "+ " + " ".join(shlex.quote(x) for x in cmd)
        print(line, flush=True)
        with self._guard, open(self.run.log, "a") as fh:
            fh.write(line + "\n")
        t0 = time.perf_counter()
        with open(log, "w") as fh:
            rc = subprocess.run(cmd, stderr=fh, env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
                                ).returncode
        self.run.timings[key] = round(time.perf_counter() - t0, 1)
        text = log.read_text(errors="replace")
        said = [x for x in text.splitlines() if "\r" not in x and "%|" not in x]
        if said:
            print("\n".join(said), file=sys.stderr, flush=True)
        return rc, text

    def train(self, c: Cell) -> dict:
        """Train the cell's run once (``runs/<name>.trained.json`` marks it done) and return its sanity line
        (:func:`fidelity_protocol.sanity`, ``train_seconds``; ``failed``: mapo-train's error when it stopped the
        run for non-finite losses, which counts as diverged). Any other failure raises SystemExit."""
        run_dir = c.seed_dir(self.out) / "runs" / c.run_name
        marker = run_dir.with_name(c.run_name + ".trained.json")
        with self.lock(run_dir):
            if not marker.is_file():
                settings = {**P.TRAIN, **dict(c.params), "seed": c.seed}
                data = self.data(c.dataset, c.seed)
                t0 = time.perf_counter()
                run_dir.parent.mkdir(parents=True, exist_ok=True)
                log = run_dir.with_name(c.run_name + ".log")
                rc, text = self.logged(f"{c.dataset} seed {c.seed}: train {c.run_name}", log, "mapo-train",
                                       "--data", data, "--model", P.MODEL, "--output-dir", run_dir,
                                       "--objective", c.method,
                                       *[x for k, v in settings.items() for x in (f"--{k.replace('_', '-')}", v)],
                                       "--logging-steps", 1, "--checkpointing-steps", 100000, "--report-to", "none",
                                       "--overwrite")
                errors = [x[len("error: "):] for x in text.splitlines() if x.startswith("error: ")]
                failed = None
                if rc != 0:
                    if rc == 2 and errors and "non-finite loss" in errors[-1]:
                        failed = errors[-1]
                    else:
                        raise SystemExit(f"error: mapo-train failed (exit {rc}) for {c.dataset} seed {c.seed} "
                                         f"{c.run_name}: {errors[-1] if errors else 'see ' + str(log)}; rerun to "
                                         "resume")
                metrics = run_dir / "metrics.jsonl"
                lines = metrics.read_text().splitlines() if metrics.is_file() else []
                trace = sanity([json.loads(x) for x in lines if x.strip()], P.TRAIN["max_steps"])
                if failed:
                    trace.update(failed=failed, diverged=True)
                marker.write_text(json.dumps({**trace, "train_seconds": round(time.perf_counter() - t0, 1)}) + "\n")
        return json.loads(marker.read_text())

    def evaluate(self, c: Cell) -> dict:
        """Run (or resume) mapo-eval of the cell's model beside the base in the shared eval folder of its data
        seed and split; returns {model: {metric: {mean, low, high}}} for the base and the cell's model."""
        ds: Dataset = P.DATASETS[c.dataset]
        eval_dir = c.seed_dir(self.out) / f"eval-{c.split}"
        prompts = caption_file(self.out, c.split, ds.eval_prefix)
        with self.lock(eval_dir):
            self.run(f"{c.dataset} seed {c.seed}: eval {c.split} {c.run_name}", "mapo-eval",
                     "--candidate", c.seed_dir(self.out) / "runs" / c.run_name, "--prompts", prompts,
                     "--output", eval_dir, "--metrics", f"{ds.target},{P.PROMPT_JUDGE}", *ds.eval_extra, *SAMPLING,
                     "--seeds", P.EVAL_SEEDS, "--batch-size", 24, "--grid-prompts", 4)
            summary = json.loads((eval_dir / "summary.json").read_text())
        keys = {ds.target: ds.target_key, P.PROMPT_JUDGE: "prompt_accuracy"}
        nan = math.nan
        return {model: {key: {"mean": summary["metrics"][m]["per_model"][model].get("rate", nan),
                              "low": summary["metrics"][m]["per_model"][model].get("rate_low", nan),
                              "high": summary["metrics"][m]["per_model"][model].get("rate_high", nan)}
                        for m, key in keys.items()}
                for model in ("base", c.run_name)}

    def cell(self, c: Cell) -> dict:
        path = c.result_file(self.out)
        if path.is_file():
            return json.loads(path.read_text())
        trace = self.train(c)
        if trace.get("failed"):  # no model was saved: nothing to evaluate
            nan = {"mean": math.nan, "low": math.nan, "high": math.nan}
            keys = (P.DATASETS[c.dataset].target_key, "prompt_accuracy")
            rates = {c.run_name: dict.fromkeys(keys, nan), "base": dict.fromkeys(keys, nan)}
        else:
            rates = self.evaluate(c)
        result = {"dataset": c.dataset, "method": c.method, "setting": c.setting, "params": dict(c.params),
                  "seed": c.seed, "split": c.split, "run": c.run_name, **rates[c.run_name], "base": rates["base"],
                  **trace}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        self._finished_step()
        return result

    def map(self, fn, items: list) -> list:
        if self.jobs <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(self.jobs) as pool:
            return list(pool.map(fn, items))


def sweep_cells(datasets: list[str]) -> list[Cell]:
    return [cell(d, m, p, s, "validation", "sweep") for d in datasets for m, grid in P.SWEEP.items() for p in grid
            for s in P.SWEEP_SEEDS]


def picks_from(sweep: list[dict]) -> dict:
    """{dataset: {method: picked params or None}} by the protocol's rule, with every candidate's score."""
    out: dict = {}
    for d in sorted({r["dataset"] for r in sweep}):
        ds = P.DATASETS[d]
        out[d] = {}
        for method, grid in P.SWEEP.items():
            candidates = []
            for params in grid:
                runs = [r for r in sweep if r["dataset"] == d and r["method"] == method and r["params"] == params]
                if not runs:
                    continue
                candidates.append({"params": params, "diverged": any(r["diverged"] for r in runs),
                                   "stalled": any(r["stalled"] for r in runs),
                                   "scores": [validation_score(r[ds.target_key]["mean"], r["prompt_accuracy"]["mean"],
                                                               ds.lower_is_better) for r in runs]})
            best = pick(candidates)
            out[d][method] = {"picked": best["params"] if best else None, "candidates": candidates}
    return out


def final_cells(datasets: list[str], picks: dict, has_sft_term: bool) -> list[Cell]:
    cells: dict[Cell, Cell] = {}
    for d in datasets:
        tuned = {m: v["picked"] for m, v in picks[d].items() if v["picked"] is not None}
        for m, params in tuned.items():
            for s in P.FINAL_SEEDS:
                cells.setdefault(cell(d, m, params, s, "heldout", "tuned"), cell(d, m, params, s, "heldout", "tuned"))
        for m, params in P.SHARED.items():
            c = cell(d, m, params, P.FINAL_SEEDS[0], "heldout", "shared")
            cells.setdefault(c, c)
        if "dpo" in tuned and "mapo" in tuned:
            for name, (m, params) in ablations(tuned, has_sft_term).items():
                for s in P.FINAL_SEEDS:
                    c = cell(d, m, params, s, "heldout", name)
                    cells.setdefault(c, c)
    return list(cells.values())


def ablations_not_run(datasets: list[str], picks: dict, has_sft_term: bool) -> dict[str, str]:
    """{dataset or "all": why an ablation of :func:`fidelity_protocol.ablations` was not run} (for the report)."""
    out = {}
    if not has_sft_term:
        out["all"] = "dpo+sft: mapo-train has no SFT term to add to DPO (no --sft-weight option)"
    for d in datasets:
        missing = [m for m in ("dpo", "mapo") if picks[d][m]["picked"] is None]
        if missing:
            out[d] = f"every ablation: no tuned {' or '.join(missing)} setting to start from"
    return out


def hits(eval_dir: Path, model: str, metric: str) -> dict[tuple, float]:
    """{(prompt_id, seed_index): 1.0 / 0.0 / NaN} of ``model``'s images on ``metric`` above its threshold."""
    import pyarrow.parquet as pq

    threshold = json.loads((eval_dir / "summary.json").read_text())["metrics"][metric]["threshold"]
    rows = pq.read_table(eval_dir / "scores.parquet").to_pylist()
    return {(r["prompt_id"], r["seed_index"]):
            float(r["score"] > threshold) if math.isfinite(r["score"]) else math.nan
            for r in rows if r["model"] == model and r["metric"] == metric}


def pooled(out: Path, cells: list[dict]) -> list[dict]:
    """Per (dataset, method, setting) over its seeds: each seed's rates, their spread, and one pooled rate with a
    prompt-clustered interval (:func:`evaluation.stats.bootstrap_ci` over all seeds' hits, groups = the caption).
    Seeds whose training failed are listed as ``failed_seeds`` and left out (NaN rates when every seed failed)."""
    from evaluation.stats import bootstrap_ci

    groups: dict[tuple, list[dict]] = {}
    for r in cells:
        groups.setdefault((r["dataset"], r["method"], r["setting"]), []).append(r)
    rows = []
    for (d, m, setting), every in groups.items():
        ds = P.DATASETS[d]
        runs = [r for r in every if not r.get("failed")]  # a failed training has no images
        row = {"dataset": d, "method": m, "setting": setting, "params": every[0]["params"],
               "seeds": [r["seed"] for r in runs], "failed_seeds": [r["seed"] for r in every if r.get("failed")]}
        for metric, key in ((ds.target, ds.target_key), (P.PROMPT_JUDGE, "prompt_accuracy")):
            if not runs:
                row[key] = {"mean": math.nan, "low": math.nan, "high": math.nan, "per_seed": [], "spread": []}
                continue
            values, prompts = [], []
            for r in runs:
                h = hits(out / d / f"seed{r['seed']}" / "eval-heldout", r["run"], metric)
                values += list(h.values())
                prompts += [k[0] for k in h]
            ci = bootstrap_ci(values, prompts)
            per_seed = [r[key]["mean"] for r in runs]
            row[key] = {"mean": ci.estimate, "low": ci.low, "high": ci.high, "per_seed": per_seed,
                        "spread": [min(per_seed), max(per_seed)]}
        rows.append(row)
    return rows


def paired(out: Path, cells: list[dict]) -> list[dict]:
    """MaPO - SFT / DPO / KTO (tuned settings) on the same held-out captions, evaluation seeds and data seeds."""
    rows = []
    tuned = [r for r in cells if r["setting"] == "tuned" and not r.get("failed")]  # a failed run has no images
    for d in sorted({r["dataset"] for r in tuned}):
        ds = P.DATASETS[d]
        for a, b in P.PAIRED:
            for metric, key in ((ds.target, ds.target_key), (P.PROMPT_JUDGE, "prompt_accuracy")):
                xa, xb, prompts = [], [], []
                for s in P.FINAL_SEEDS:
                    ra = [r for r in tuned if (r["dataset"], r["method"], r["seed"]) == (d, a, s)]
                    rb = [r for r in tuned if (r["dataset"], r["method"], r["seed"]) == (d, b, s)]
                    if not (ra and rb):
                        continue
                    eval_dir = out / d / f"seed{s}" / "eval-heldout"
                    ha, hb = hits(eval_dir, ra[0]["run"], metric), hits(eval_dir, rb[0]["run"], metric)
                    for k in sorted(set(ha) & set(hb)):
                        xa.append(ha[k])
                        xb.append(hb[k])
                        prompts.append(k[0])
                if xa:
                    rows.append({"dataset": d, "a": a, "b": b, "setting": "tuned", "metric": key,
                                 "lower_is_better": ds.lower_is_better and key == ds.target_key,
                                 **paired_difference(xa, xb, prompts)})
    return rows


def provenance() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "command": "make fidelity-full (python scripts/fidelity_full.py " + " ".join(sys.argv[1:]) + ")"}


def protocol() -> dict:
    return {"model": P.MODEL, "train": P.TRAIN, "sampling": [str(x) for x in SAMPLING], "sweep": P.SWEEP,
            "shared": P.SHARED, "sweep_seeds": list(P.SWEEP_SEEDS), "final_seeds": list(P.FINAL_SEEDS),
            "eval_seeds_per_caption": P.EVAL_SEEDS,
            "pairs_per_fit_caption": P.PAIRS_PER_FIT_CAPTION, "paired": [list(p) for p in P.PAIRED],
            "rule": "score = (target + prompt following) / 2 on the 16 validation captions (train index % 3 == 2), "
                    "target turned so higher is better; diverged or stalled runs never picked; ties: grid order",
            "datasets": {n: {"generate": list(d.generate), "label": list(d.label), "target": d.target,
                             "lower_is_better": d.lower_is_better, "eval_prefix": d.eval_prefix}
                         for n, d in P.DATASETS.items()}}


def has_sft_term() -> bool:
    from dataclasses import fields

    from train.config import TrainConfig

    return any(f.name == "sft_weight" for f in fields(TrainConfig))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", nargs="?", default="fidelity-full-output", type=Path)
    parser.add_argument("--jobs", type=int, default=2, help="cells at a time (one torch thread each)")
    parser.add_argument("--datasets", default=",".join(P.DATASETS), help="comma-separated subset of the datasets")
    parser.add_argument("--plan", action="store_true", help="print the cells and what is finished; run nothing")
    parser.add_argument("--smoke", action="store_true", help="a minutes-long run of every phase (numbers mean nothing)")
    args = parser.parse_args(argv)
    if args.smoke:
        P.use_smoke_settings()
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in datasets if d not in P.DATASETS]
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}; choose from {', '.join(P.DATASETS)}")
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "protocol.json"
    if saved.is_file() and json.loads(saved.read_text()) != json.loads(json.dumps(protocol())):
        sys.exit(f"error: {out} was made with another protocol (protocol.json); use another output folder")
    if not saved.is_file():
        write_text_atomic(saved, json.dumps(protocol(), indent=1) + "\n")
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    sweep = sweep_cells(datasets)
    if args.plan:
        done = sum(c.result_file(out).is_file() for c in sweep)
        print(f"sweep: {len(sweep)} cells ({done} finished); then per dataset the picked setting x "
              f"{len(P.FINAL_SEEDS)} seeds x {len(P.SWEEP)} methods, {len(P.SHARED)} shared cells and the ablations")
        return out
    prov = provenance()
    study = Study(out, args.jobs, Sittings(out, args.jobs, prov["commit"]))
    t0 = time.perf_counter()
    study.map(lambda key: study.data(*key), [(d, s) for d in datasets for s in P.SWEEP_SEEDS])
    sweep_results = study.map(study.cell, sweep)
    picks = picks_from(sweep_results)
    (out / "picks.json").write_text(json.dumps(picks, indent=1) + "\n")
    study.map(lambda key: study.data(*key), [(d, s) for d in datasets for s in P.FINAL_SEEDS])
    sft_term = has_sft_term()
    results = study.map(study.cell, final_cells(datasets, picks, sft_term))
    from fidelity_full_report import write_report

    study.sittings.update()
    doc = {"protocol": protocol(), "provenance": prov, "cells": results, "sweep": sweep_results,
           "picks": {d: {m: v["picked"] for m, v in p.items()} for d, p in picks.items()},
           "ablations_not_run": ablations_not_run(datasets, picks, sft_term),
           "pooled": pooled(out, results), "paired": paired(out, results),
           "seconds_this_sitting": round(time.perf_counter() - t0, 1), "timings": study.run.timings,
           "cpu": Sittings.total(out), "sittings": Sittings.read(out)}
    (out / "fidelity-full.json").write_text(json.dumps(doc, indent=1) + "\n")
    report = write_report(out, doc, picks)
    print(f"fidelity-full: {report}")
    return report


if __name__ == "__main__":
    main()

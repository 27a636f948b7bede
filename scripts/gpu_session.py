"""One prepared GPU session: the performance measurements that only a GPU can make, in priority order, in one call.

A lent GPU comes for about 15 minutes, start-up included, so the measurements are ranked and each one
runs only if the time left covers its expected cost; whatever runs leaves its JSON behind even when
stopped (the bench rewrites it after every configuration). First, here: `bash scripts/gpu_wheels.sh`
(diffusers and its few missing needs into the git-ignored `.whl/`, about 7 MB). Then ONE device call,
`carry: [".whl"]`, `timeout_s: 600`, command:

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \\
      && PYTHONPATH=/tmp/site python3 scripts/gpu_session.py --output $OUT --budget-s 540

(the machine's start-up comes on top: a 15-minute lease holds one such call). As expected (520 s), that
call covers the four "core" sections and skips the rest; later leases: ``--sections compile``, then
``--sections instep,generate``. The expected seconds are guesses until a lease has measured them:
``summary.md`` records each section's wall time; correct ``SECTIONS`` then.

Sections (``--sections``, default all, in this order; the first four are the "core" claims):

- ``maxbatch80``: largest batch of MaPO and DPO on an 80 GB card (the MaPO paper's table), emulated on a
  bigger GPU by capping the allocator; each searched from a prediction (bench/search.py);
- ``memory24``: a full fine-tune with the optimizer in the backward pass and bf16 weights + stochastic
  rounding at 1 pair (the 24 GB claim; plain MaPO's 1-pair row comes from ``maxbatch80``);
- ``mfu8``: MaPO at 8 pairs, MFU against the datasheet peak and against 790 TFLOP/s;
- ``lora4``: MaPO LoRA (rank 8) at 4 pairs (the 12 GB claim);
- ``sd35medium``, ``sd35large``: SD3.5-medium and -large (random-weight transformers at the published configs) at
  1 pair, full and LoRA, and the largest batch on an emulated 80 GB card (issue 26 item 5: measure the estimate);
- ``instep``: MaPO with the VAE and text encoders inside the step (as upstream trainers), with its setup and
  first-step times (it did not finish in 100 s before);
- ``compile``: MaPO full, LoRA and SFT, eager vs regional torch.compile, at 1 pair (is LoRA as fast as a full
  fine-tune, SFT faster than MaPO, at small batches?);
- ``generate``: generation throughput, batch-invariant vs batched (``python -m bench generate``).

Writes three files into ``--output``, rewritten after every section: ``results.json`` (each section's
bench JSON, or the generation benchmark's text), ``summary.md`` (the tables, what ran, what was skipped
and why, each section's wall time, so the next session can plan) and ``log.txt`` (everything printed).
Dry run on a CPU, tiny model:

    python scripts/gpu_session.py --output /tmp/gpu-dry --model tiny-sdxl --device cpu --budget-s 900
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Section:
    name: str
    expected_s: int  # on an H200 at 1024 px: a guess until a session has measured it (summary.md records it)
    bench_args: tuple = ()  # python -m bench train arguments; empty: the generation benchmark
    model: str | None = None  # the section's own model (SD3.5's); None: --model


SECTIONS = (
    Section("maxbatch80", 240, ("--configurations", "mapo,dpo", "--batch-size", "1", "--steps", "1", "--warmup", "1",
                                "--max-batch-configurations", "mapo,dpo", "--max-batch-gpu-memory", "80")),
    Section("memory24", 90, ("--configurations", "mapo-inbwd-bf16", "--batch-size", "1", "--dtype", "bf16",
                             "--no-max-batch")),
    Section("mfu8", 110, ("--configurations", "mapo", "--batch-size", "8", "--no-max-batch")),
    Section("lora4", 80, ("--configurations", "mapo-lora", "--batch-size", "4", "--no-max-batch")),
    # Owed to issue 26 item 5: SD3.5's measured memory, against docs/benchmarks.md "SD3.5 (flow matching)"'s
    # estimate (random-weight transformers, random precomputed tensors: bench.data.random_precomputed).
    Section("sd35medium", 300, ("--configurations", "mapo,dpo,mapo-lora,dpo-lora", "--batch-size", "1", "--steps", "2",
                                "--warmup", "1", "--max-batch-configurations", "mapo,dpo",
                                "--max-batch-gpu-memory", "80"), model="sd35-medium-arch"),
    Section("sd35large", 300, ("--configurations", "mapo,mapo-lora,dpo-lora", "--batch-size", "1", "--steps", "2",
                               "--warmup", "1", "--max-batch-configurations", "mapo-lora,dpo-lora",
                               "--max-batch-gpu-memory", "80"), model="sd35-large-arch"),
    Section("instep", 100, ("--configurations", "mapo-instep", "--batch-size", "1", "--steps", "2", "--warmup", "1",
                            "--no-max-batch")),
    Section("compile", 540, ("--configurations", "mapo,mapo-compile,mapo-lora,mapo-lora-compile,sft,sft-compile",
                             "--batch-size", "1", "--no-max-batch")),
    Section("generate", 180),
)
CORE = ("maxbatch80", "memory24", "mfu8", "lora4")  # 520 s expected: one lease's call (--budget-s 540)
# The tiny CPU dry run: everything small, so the whole script runs in minutes on 2 cores.
TINY = {"--resolution": "64", "--max-batch-limit": "8"}


def _run(cmd: list, timeout_s: float, log) -> tuple[int | None, float]:
    """Run ``cmd`` in its own process group (bench's workers with it); kill the group at the timeout."""
    t0 = time.perf_counter()
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc = proc.wait(timeout=max(timeout_s, 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = None
    return rc, time.perf_counter() - t0


def _bench_command(section: Section, args, out: Path) -> list:
    model = section.model or args.model
    if section.model and args.model.startswith("tiny"):  # the CPU dry run: the family's tiny model
        model = "tiny-sd3"
    cmd = [sys.executable, "-m", "bench", "train", "--model", model, "--device", args.device, *section.bench_args,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--output", str(out)]
    # A later flag wins in typer: the section's own --steps / --warmup (maxbatch80: 1) go last.
    for flag in ("--steps", "--warmup"):
        if flag in section.bench_args:
            i = section.bench_args.index(flag)
            cmd += [flag, section.bench_args[i + 1]]
    if args.model.startswith("tiny"):
        for flag, value in TINY.items():
            cmd += [flag, value]
    return cmd


def _generate_command(args) -> list:
    tiny = args.model.startswith("tiny")
    return [sys.executable, "-m", "bench", "generate", "--model", args.model,
            "--resolution", "64" if tiny else "1024", "--num-inference-steps", "4" if tiny else "30", "--pairs", "4",
            "--batch-size", "4"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", required=True, help="Folder for the results ($OUT on the device machine).")
    ap.add_argument("--budget-s", type=float, default=540, help="Seconds this script may take in all.")
    ap.add_argument("--sections", default=",".join(s.name for s in SECTIONS),
                    help="Comma-separated, run in the order of the list above.")
    ap.add_argument("--model", default="sdxl-arch")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=3, help="Timed steps per configuration.")
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args(argv)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(wanted) - {s.name for s in SECTIONS})
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(s.name for s in SECTIONS)}")
    if args.device == "cpu":  # a dry run on a shared machine: OpenMP threads spinning make tiny steps erratic
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + args.budget_s
    done: list = []  # (section, status, note, seconds)
    results: dict = {}  # section -> the bench's JSON, or the generation benchmark's text
    with tempfile.TemporaryDirectory(prefix="gpu-session-") as work, open(out / "log.txt", "w") as log:
        for section in (s for s in SECTIONS if s.name in wanted):
            left = deadline - time.perf_counter()
            expected = section.expected_s if args.device.startswith("cuda") else 0
            if left < max(expected, 20):
                done.append((section.name, "skipped", f"{left:.0f} s left, expected {section.expected_s} s", 0.0))
                continue
            target = Path(work) / f"{section.name}.{'json' if section.bench_args else 'txt'}"
            if section.bench_args:
                rc, seconds = _run(_bench_command(section, args, target), left, log)
            else:
                with open(target, "w") as fh:
                    rc, seconds = _run(_generate_command(args), left, fh)
            status = "ok" if rc == 0 else ("stopped at the budget" if rc is None else f"failed (exit {rc})")
            if target.exists():  # a stopped bench leaves what it measured ("complete": false)
                text = target.read_text()
                results[section.name] = _json_or_text(text) if section.bench_args else text
            done.append((section.name, status, "", seconds))
            print(f"gpu_session: {section.name}: {status} in {seconds:.0f} s", file=sys.stderr, flush=True)
            _write(out, done, results, args)  # after every section: a lease cut short keeps the finished ones
    _write(out, done, results, args)
    print((out / "summary.md").read_text())
    return 0 if all(status in ("ok", "skipped") for _, status, _, _ in done) else 1


def _timings(result: dict) -> list:
    """Where each configuration's wall time went (model setup, warm-up steps, max-batch search): item 4's numbers."""
    out = []
    for name, row in result.get("configurations", {}).items():
        parts = [f"setup {row['setup_s']:.1f} s"] if "setup_s" in row else []
        if row.get("warmup_step_s"):
            parts.append("warm-up steps " + ", ".join(f"{t:.2f}" for t in row["warmup_step_s"]) + " s")
        if row.get("max_batch_seconds") is not None:
            tries = " ".join(f"{b}{'' if ok else 'x'}" for b, ok in row["max_batch_tries"])
            parts.append(f"max-batch search {row['max_batch_seconds']:.0f} s (tries {tries}; found {row['max_batch']})")
        if parts:
            out.append(f"- {name}: " + "; ".join(parts))
    return out


def _json_or_text(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _write(out: Path, done: list, results: dict, args) -> None:
    """``results.json`` (every section's JSON) and ``summary.md``: three files with the log, under the device
    tool's eight."""
    (out / "results.json").write_text(json.dumps({"sections": results, "status": [list(d) for d in done]}, indent=1))
    (out / "summary.md").write_text(_summary(done, results, args))


def _summary(done: list, results: dict, args) -> str:
    from bench.report import table

    lines = [f"# GPU session: {args.model} on {args.device}, budget {args.budget_s:.0f} s", "",
             "| section | status | note | wall s |", "|---|---|---|---|"]
    lines += [f"| {name} | {status} | {note} | {seconds:.0f} |" for name, status, note, seconds in done]
    for name, result in results.items():
        lines += ["", f"## {name}", ""]
        if isinstance(result, dict):
            try:
                lines.append(table(result))
            except (KeyError, TypeError) as exc:
                lines.append(f"(could not tabulate: {exc!r})")
            lines += ["", *_timings(result)]
        else:
            lines.append(str(result).strip())
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

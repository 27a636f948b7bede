"""A whole benchmark run: data once, each configuration in its own worker process, then the report."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from pipeline.data.atomic import write_text_atomic
from pipeline.errors import UserError

from .config import CONFIGURATIONS, BenchConfig
from .flops import measured_peak_tflops, mfu, peak_tflops
from .report import add_ratios, environment, table

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_NOTE = ("random pixels in [-1, 1] and fixed captions, encoded once by the model's real VAE (fp32) and text "
             "encoders on the benchmark device, stored in fp16 like `mapo-data precompute`; mapo-instep encodes "
             "the same pixels and captions inside every step")


class WorkerFailed(Exception):
    pass


def repo_env() -> dict:
    """This process's environment with the repository first on PYTHONPATH: a child ``python -m bench.*`` runs the
    same checkout without an install."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_worker(job: dict, workdir: Path, timeout_s: int) -> dict:
    """Run one job in a fresh interpreter; its result JSON, or WorkerFailed with the tail of its log."""
    name = f"{job['job']}-{job.get('name', 'data')}"
    job_path, result_path, log_path = (workdir / f"{name}.{ext}" for ext in ("job.json", "result.json", "log"))
    job_path.write_text(json.dumps(job))
    env = repo_env()
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run([sys.executable, "-m", "bench.worker", str(job_path), str(result_path)],
                                  cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise WorkerFailed(f"timed out after {timeout_s} s") from None
    if proc.returncode != 0 or not result_path.exists():
        tail = log_path.read_text().strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        raise WorkerFailed(tail[-1])
    return json.loads(result_path.read_text())


def make_job(cfg: BenchConfig, device, job: str, **extra) -> dict:
    """A worker job (bench/worker.py) of kind ``job`` ("data" or "time") for ``cfg`` on ``device``."""
    return {"job": job, "model": cfg.model, "device": str(device), "dtype": cfg.dtype, "resolution": cfg.resolution,
            "batch_size": cfg.batch_size, "steps": cfg.steps, "warmup": cfg.warmup, "pairs": cfg.pairs,
            "gradient_checkpointing": cfg.gradient_checkpointing, "seed": cfg.seed,
            "max_batch_limit": cfg.max_batch_limit, "max_batch_gpu_memory": cfg.max_batch_gpu_memory, **extra}


def config_job(cfg: BenchConfig, device, job: str, name: str, data_path: Path, sdxl: bool,
               max_batch_search: bool = False) -> dict:
    """The job that times configuration ``name`` on the data job's pairs at ``data_path``."""
    c = CONFIGURATIONS[name]
    return make_job(cfg, device, job, name=name, objective=c.objective, lora_rank=cfg.lora_rank if c.lora else 0,
                in_step=c.in_step, data_path=str(data_path), sdxl=sdxl, count_flops=not c.lora and c.objective != "dpo",
                options=[list(o) for o in c.options], max_batch_search=max_batch_search)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_bench(cfg: BenchConfig) -> dict:
    """Measure every configuration of ``cfg``; returns the result dict (also written to ``cfg.output``).

    The JSON is rewritten after every configuration and search (``"complete": false`` until the end), so
    a run stopped early (a GPU lease running out) still leaves what it measured.
    """
    from pipeline.models.loading import resolve_device

    cfg = cfg.resolved()
    # UserError for cuda without CUDA. This process never initialises CUDA itself (no context, no
    # memory taken from the workers): the data worker reports the GPU's name.
    device = resolve_device(cfg.device)
    env = environment(device, cfg.dtype)
    rows: dict = {}
    t_start = time.perf_counter()
    peak = cfg.peak_tflops
    measured_peak = None
    search = device.type == "cuda" and cfg.max_batch

    def result(complete: bool) -> dict:
        for row in rows.values():
            flops = row.get("flops")
            if flops and row.get("median_ms"):
                seconds = row["median_ms"] / 1000
                row["achieved_tflops"] = flops["model"] / seconds / 1e12
                row["mfu"] = mfu(flops["model"], seconds, peak)
                # Also against the bf16 matmul rate measured on H100/H200 machines, not only the datasheet's.
                row["mfu_vs_measured_peak"] = mfu(flops["model"], seconds, measured_peak)
        out = {
            "format": "mapo-bench/1",
            "complete": complete,
            "settings": {**{k: v for k, v in asdict(cfg).items() if k not in ("output", "worker_timeout_s")},
                         "device": str(device), "max_batch_searched": search,
                         "peak_tflops": peak, "measured_peak_tflops": measured_peak,
                         "data": DATA_NOTE},
            "environment": env,
            "configurations": rows,
            "ratios": add_ratios(rows),
            "seconds": time.perf_counter() - t_start,
        }
        write_result(out, cfg.output)
        return out

    with tempfile.TemporaryDirectory(prefix="mapo-bench-") as tmp:
        workdir = Path(tmp)
        data_path = workdir / "pairs.pt"
        _say(f"bench: encoding {cfg.pairs} pairs at {cfg.resolution} px with {cfg.model}'s VAE and text encoders ...")
        try:
            data = run_worker(make_job(cfg, device, "data", data_path=str(data_path)), workdir, cfg.worker_timeout_s)
        except WorkerFailed as exc:
            raise UserError(f"could not prepare the benchmark data with '{cfg.model}': {exc}") from None
        env["device_name"] = data.get("device_name") or env["device_name"]
        peak = cfg.peak_tflops or (peak_tflops(env["device_name"]) if device.type == "cuda" else None)
        measured_peak = measured_peak_tflops(env["device_name"]) if device.type == "cuda" else None
        for i, name in enumerate(cfg.configurations, 1):
            _say(f"bench: [{i}/{len(cfg.configurations)}] {name} ...")
            row = {"label": CONFIGURATIONS[name].label}
            searched = name in cfg.max_batch_configurations
            try:
                row.update(run_worker(config_job(cfg, device, "time", name, data_path, data["sdxl"],
                                                  max_batch_search=search and searched), workdir, cfg.worker_timeout_s))
            except WorkerFailed as exc:
                row["error"] = str(exc)
                _say(f"bench: {name} failed: {exc}")
            else:
                _say(f"bench:   {row['median_ms']:.1f} ms/step, peak {row['peak_mem_mb']:.0f} MiB")
                if searched:
                    row["max_batch"] = None  # not searched (CPU, --no-max-batch) or no answer (max_batch_error)
                found = row.pop("max_batch_search", None)
                if found:
                    row.update(max_batch=found["max_batch"], max_batch_hit_limit=found["hit_limit"],
                               max_batch_tries=found["tries"], max_batch_peaks_mb=found["peaks_mb"],
                               max_batch_capacity_mb=found["capacity_mb"], max_batch_seconds=found["seconds"])
                    _say(f"bench:   largest batch {found['max_batch']} pairs ({len(found['tries'])} tries, "
                         f"{found['seconds']:.0f} s)")
            rows[name] = row
            result(complete=False)
    return result(complete=True)


def write_result(result: dict, output: str | None) -> None:
    """Write the result JSON to ``output`` atomically (a temporary file, then a rename); nothing when None."""
    if output:
        write_text_atomic(output, json.dumps(result, indent=2) + "\n")


def format_table(result: dict) -> str:
    return table(result)

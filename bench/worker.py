"""One benchmark job in its own process: ``python -m bench.worker JOB.json RESULT.json``.

A separate process per configuration makes the peak memory its own: on the CPU the peak RSS
(``ru_maxrss``) of a process that built only that configuration, on CUDA
``torch.cuda.max_memory_allocated``. Jobs:

- ``data``: run the real VAE / text encoders once and save the precomputed pairs (bench.data);
- ``time``: warm-up, then time ``steps`` optimizer steps; peak memory; FLOPs of one more step;
- ``max_batch``: the largest batch that fits on the GPU (bench.search), OOM caught per try.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

from pipeline.atomic import write_text_atomic


def current_rss_mb() -> float:
    """Resident memory now (Linux /proc; elsewhere the peak so far, an upper bound)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mb()


def peak_rss_mb() -> float:
    import resource

    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20  # macOS reports bytes


def _spec(job: dict):
    from .step import StepSpec

    return StepSpec(model=job["model"], objective=job["objective"], lora_rank=job["lora_rank"], in_step=job["in_step"],
                    device=job["device"], dtype=job["dtype"], resolution=job["resolution"], batch_size=job["batch_size"],
                    gradient_checkpointing=job["gradient_checkpointing"], seed=job["seed"],
                    options=tuple(tuple(o) for o in job.get("options", ())))


def _items(job: dict, length: int | None = None):
    from .data import precomputed_items, raw_items

    if job["in_step"]:
        return raw_items(job["pairs"], job["resolution"], job["seed"], job["sdxl"], length)
    import torch

    return precomputed_items(torch.load(job["data_path"], weights_only=True), length)


def _import_everything() -> None:
    """Import what every job uses before the baseline RSS is read, so memory deltas compare like with like."""
    import diffusers  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import train.model_setup
    import train.step  # noqa: F401


def job_data(job: dict) -> dict:
    import torch

    from .data import make_precomputed

    data = make_precomputed(job["model"], torch.device(job["device"]), _dtype(job["dtype"]), job["pairs"],
                            job["resolution"], job["seed"])
    torch.save(data, job["data_path"])
    device = torch.device(job["device"])
    return {"pairs": int(data["latents"].shape[0]), "latent_shape": list(data["latents"].shape[2:]),
            "sdxl": data["pooled_prompt_embeds"] is not None,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


def _dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]


def job_time(job: dict) -> dict:
    import torch

    from .flops import count_step_flops
    from .step import BenchStep

    cuda = job["device"].startswith("cuda")
    baseline = current_rss_mb()
    bench = BenchStep(_spec(job), _items(job))
    times, losses = [], []
    for i in range(job["warmup"] + job["steps"]):
        bench.synchronize()
        t0 = time.perf_counter()
        losses.append(bench.step(i))  # float(): the step has finished on the device
        if i >= job["warmup"]:
            times.append(time.perf_counter() - t0)
    result = {
        "step_ms": [1000 * t for t in times],
        "median_ms": 1000 * statistics.median(times),
        "pairs_per_s": job["batch_size"] / statistics.median(times),
        "trainable_parameters": bench.trainable_parameters,
        "last_loss": losses[-1],
        "threads": torch.get_num_threads(),
    }
    if cuda:
        result["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["mem_kind"] = "cuda_max_allocated"
    else:
        peak = peak_rss_mb()
        result.update(peak_mem_mb=peak - baseline, peak_rss_mb=peak, baseline_rss_mb=baseline,
                      mem_kind="cpu_peak_rss_over_import_baseline")
    if job.get("count_flops"):
        result["flops"] = count_step_flops(bench, job["warmup"] + job["steps"])
    return result


def job_max_batch(job: dict) -> dict:
    """Try growing batches on one model/optimizer (their memory is part of what must fit)."""
    import gc

    import torch

    from .search import largest_batch
    from .step import BenchStep

    limit = job["max_batch_limit"]
    spec = _spec(job)
    bench = BenchStep(spec, _items(job, length=limit))

    def fits(b: int) -> bool:
        from pipeline.latent_shards import PairSampler
        from train.data import TrainData, batch_stream

        bench.stream = batch_stream(TrainData(_items(job, length=limit), PairSampler(limit, b, spec.seed)), bench.device)
        ok = True
        try:
            for i in range(2):  # the first step also allocates AdamW's state
                bench.step(i)
            bench.synchronize()
        except torch.cuda.OutOfMemoryError:
            ok = False
        except RuntimeError as exc:  # cuDNN / cuBLAS report running out of memory as plain RuntimeErrors
            if not any(s in str(exc) for s in ("out of memory", "ALLOC_FAILED")):
                raise
            ok = False
        # Out of the except block: the exception and its frames (holding activations) are gone.
        bench.optimizer.zero_grad(set_to_none=True)
        bench.stream = None
        gc.collect()
        torch.cuda.empty_cache()
        print(f"  {job['name']}: batch {b} {'fits' if ok else 'out of memory'}", file=sys.stderr, flush=True)
        return ok

    found = largest_batch(fits, start=1, limit=limit)
    return {"max_batch": found.max_batch, "hit_limit": found.hit_limit, "tries": found.tries}


JOBS = {"data": job_data, "time": job_time, "max_batch": job_max_batch}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m bench.worker JOB.json RESULT.json", file=sys.stderr)
        return 2
    with open(argv[0]) as fh:
        job = json.load(fh)
    _import_everything()
    if job.get("threads"):
        import torch

        torch.set_num_threads(int(job["threads"]))
    result = JOBS[job["job"]](job)
    write_text_atomic(argv[1], json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One benchmark job in its own process: ``python -m bench.worker JOB.json RESULT.json``.

A separate process per configuration makes the peak memory its own: on the CPU the peak RSS
(``ru_maxrss``) of a process that built only that configuration, on CUDA
``torch.cuda.max_memory_allocated``. Jobs:

- ``data``: run the real VAE / text encoders once and save the precomputed pairs (bench.data);
- ``time``: warm-up, then time ``steps`` optimizer steps; peak memory; FLOPs of one more step;
- ``max_batch``: the largest batch that fits on the GPU, predicted from the peaks at 1 and 2 pairs and
  verified around the prediction (bench.search), OOM caught per try.
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
                    device=job["device"], dtype=job["dtype"], resolution=job["resolution"],
                    batch_size=job["batch_size"],
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
    t_setup = time.perf_counter()
    bench = BenchStep(_spec(job), _items(job))
    setup_s = time.perf_counter() - t_setup
    times, losses, warmup_s = [], [], []
    for i in range(job["warmup"] + job["steps"]):
        bench.synchronize()
        t0 = time.perf_counter()
        losses.append(bench.step(i))  # float(): the step has finished on the device
        (times if i >= job["warmup"] else warmup_s).append(time.perf_counter() - t0)
    result = {
        "step_ms": [1000 * t for t in times],
        "median_ms": 1000 * statistics.median(times),
        "pairs_per_s": job["batch_size"] / statistics.median(times),
        "trainable_parameters": bench.trainable_parameters,
        "last_loss": losses[-1],
        "threads": torch.get_num_threads(),
        # Where a configuration's wall time goes (a slow first step: allocator warm-up, cuDNN autotuning,
        # torch.compile's compilation).
        "setup_s": setup_s,
        "warmup_step_s": warmup_s,
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


class CudaMemory:
    """The GPU's allocator as the max-batch search sees it: capacity, peak since a reset, release.

    ``cap_gib`` caps the allocator with ``torch.cuda.set_per_process_memory_fraction`` to search for a
    smaller card on a bigger one (e.g. the MaPO paper's 80 GB on an H200); then an allocation past it
    raises ``torch.cuda.OutOfMemoryError`` like a real card's would.
    """

    def __init__(self, device, cap_gib: float | None = None):
        import torch

        self.device = device
        total = torch.cuda.get_device_properties(device).total_memory
        if cap_gib:
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * 2**30 / total), device)
        self.capacity = min(int(cap_gib * 2**30), total) if cap_gib else total

    def reset(self) -> None:
        import torch

        torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self, batch_size: int) -> int:  # batch_size: for simulated memories (tests); the allocator knows
        import torch

        return torch.cuda.max_memory_allocated(self.device)

    def release(self) -> None:
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    # cuDNN / cuBLAS report running out of memory as plain RuntimeErrors
    return isinstance(exc, RuntimeError) and any(s in str(exc) for s in ("out of memory", "ALLOC_FAILED"))


def search_max_batch(bench, items, limit: int, memory, name: str = "") -> dict:
    """The largest batch that fits, on one built model and optimizer (their memory is part of what must fit).

    ``bench``: a :class:`bench.step.BenchStep`; ``items(length)``: its data; ``memory``: :class:`CudaMemory`
    (or a simulated one with the same methods). Peak memory is measured at 1 pair (two steps: the first
    allocates AdamW's state) and at 2 pairs, the batch where it would reach ``memory.capacity`` is predicted
    from the line through them (:func:`bench.search.predict_batch`), then verified around the prediction
    (:func:`bench.search.largest_batch_near`: two one-step tries when the prediction is exact). A try fits when its
    step raises no out-of-memory error and its peak is within the capacity.
    """
    from pipeline.latent_shards import PairSampler
    from train.data import TrainData, batch_stream

    from .search import largest_batch_near, predict_batch

    t0 = time.perf_counter()
    peaks: dict = {}
    state = {"steps": 0}

    def peak_at(b: int) -> int | None:
        """Peak bytes of one step at batch ``b`` (two steps for the very first try), None when it does not fit."""
        bench.stream = batch_stream(TrainData(items(limit), PairSampler(limit, b, bench.spec.seed)), bench.device)
        memory.reset()
        ok = True
        try:
            for _ in range(2 if state["steps"] == 0 else 1):
                bench.step(state["steps"])
                state["steps"] += 1
            bench.synchronize()
        except Exception as exc:
            if not _is_out_of_memory(exc):
                raise
            ok = False
        # Out of the except block: the exception and its frames (holding activations) are gone.
        bench.optimizer.zero_grad(set_to_none=True)
        bench.stream = None
        memory.release()
        peak = memory.peak(b) if ok else None
        peaks[b] = peak if peak is not None and peak <= memory.capacity else None
        print(f"  {name}: batch {b} " + (f"fits (peak {peak / 2**30:.2f} GiB)" if peaks[b] else "does not fit"),
              file=sys.stderr, flush=True)
        return peaks[b]

    known = {1: peak_at(1) is not None}
    if known[1] and limit >= 2:
        known[2] = peak_at(2) is not None
    if not known[1]:
        found_batch, hit, tries, guess = 0, False, [], None
    else:
        guess = predict_batch(peaks[1], peaks[2], 1, 2, memory.capacity) if known.get(2) else 1
        found = largest_batch_near(lambda b: peak_at(b) is not None, guess, limit=limit, known=known)
        found_batch, hit, tries = found.max_batch, found.hit_limit, found.tries
    return {"max_batch": found_batch, "hit_limit": hit, "predicted": guess,
            "tries": [[b, ok] for b, ok in known.items()] + [list(t) for t in tries],
            "peaks_mb": {str(b): p / 2**20 for b, p in peaks.items() if p},
            "capacity_mb": memory.capacity / 2**20, "seconds": time.perf_counter() - t0}


def job_max_batch(job: dict) -> dict:
    """:func:`search_max_batch` on the GPU, capped at ``max_batch_gpu_memory`` GiB when set."""
    from .step import BenchStep

    limit = job["max_batch_limit"]
    bench = BenchStep(_spec(job), _items(job, length=limit))
    return search_max_batch(bench, lambda length: _items(job, length=length), limit,
                            CudaMemory(bench.device, job.get("max_batch_gpu_memory")), job["name"])


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

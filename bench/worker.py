"""One benchmark job in its own process: ``python -m bench.worker JOB.json RESULT.json``.

A separate process per configuration makes the peak memory its own: on the CPU the peak RSS
(``ru_maxrss``) of a process that built only that configuration, on CUDA
``torch.cuda.max_memory_allocated``. Jobs:

- ``data``: run the real VAE / text encoders once and save the precomputed pairs (bench.data);
- ``time``: warm-up, then time ``steps`` optimizer steps; peak memory; FLOPs of one more step; then, with
  ``max_batch_search``, the largest batch that fits on the GPU on the same model (bench.search: each try's
  peak predicts the next batch), OOM caught per try.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

from pipeline.data.atomic import write_text_atomic


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


def job_spec(job: dict):
    """The :class:`bench.step.StepSpec` of a "time" job (:func:`bench.runner.config_job`)."""
    from .step import StepSpec

    return StepSpec(model=job["model"], objective=job["objective"], lora_rank=job["lora_rank"], in_step=job["in_step"],
                    device=job["device"], dtype=job["dtype"], resolution=job["resolution"],
                    batch_size=job["batch_size"],
                    gradient_checkpointing=job["gradient_checkpointing"], seed=job["seed"],
                    options=tuple(tuple(o) for o in job.get("options", ())))


def job_items(job: dict, length: int | None = None):
    """A "time" job's pairs: raw pixels and captions for an in-step configuration, else the data job's
    precomputed tensors read from ``job["data_path"]`` (``length``: as many items, cycling)."""
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
    """The "data" job: encode the shared pairs once (bench.data.make_precomputed) and save them to
    ``job["data_path"]``; returns their count, latent shape, whether SDXL-style conditioning, the GPU's name."""
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
    bench = BenchStep(job_spec(job), job_items(job))
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
    if job.get("max_batch_search"):  # on the model already built: no second build of a 2.6B UNet
        try:
            result["max_batch_search"] = search_max_batch(
                bench, lambda length: job_items(job, length=length), job["max_batch_limit"],
                CudaMemory(bench.device, job.get("max_batch_gpu_memory")), job["name"])
        except Exception as exc:  # the timing above stands; the row says why the search has no answer
            result["max_batch_error"] = f"{type(exc).__name__}: {exc}"
    return result


class CudaMemory:
    """The GPU's allocator as the max-batch search sees it: capacity, peak since a reset, release.

    ``cap_gib`` emulates a card of that many GiB on a bigger one (e.g. the MaPO paper's 80 GB card on an
    H200): the allocator is capped with ``torch.cuda.set_per_process_memory_fraction`` at the card's size
    less what this process holds outside the allocator now (the CUDA context, library handles), which a
    real card of that size would hold too; an allocation past the cap raises
    ``torch.cuda.OutOfMemoryError`` as on that card. ``device`` may lack an index (``cuda``): the current
    device is meant, and every torch.cuda call gets the index (``set_per_process_memory_fraction``
    refuses an index-less device).
    """

    def __init__(self, device, cap_gib: float | None = None):
        import torch

        self.index = device.index if device.index is not None else torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(self.index)
        self.outside_allocator = max(total - free - torch.cuda.memory_reserved(self.index), 0)
        if cap_gib:
            cap = min(int(cap_gib * 2**30) - self.outside_allocator, total)
            torch.cuda.set_per_process_memory_fraction(max(cap, 0) / total, self.index)
            self.capacity = cap
        else:
            self.capacity = total - self.outside_allocator

    def reset(self) -> None:
        import torch

        torch.cuda.reset_peak_memory_stats(self.index)

    def peak(self, batch_size: int) -> int:  # batch_size: for simulated memories (tests); the allocator knows
        import torch

        return torch.cuda.max_memory_allocated(self.index)

    def release(self) -> None:
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()


def search_max_batch(bench, items, limit: int, memory, name: str = "") -> dict:
    """The largest batch that fits, on one built model and optimizer (their memory is part of what must fit).

    ``bench``: a :class:`bench.step.BenchStep`; ``items(length)``: its data; ``memory``: :class:`CudaMemory`
    (or a simulated one with the same methods). Each try runs one optimizer step at the batch (two for the
    first: it allocates AdamW's state) and reads its peak; a try fits when no out-of-memory error is
    raised and the peak is within ``memory.capacity``. The batches tried come from
    :func:`bench.search.largest_batch` (secant prediction from the largest fits, bisection after a failure).
    """
    from pipeline.data.latent_shards import PairSampler
    from train.data import TrainData, batch_stream

    from .search import largest_batch
    from .step import is_out_of_memory

    t0 = time.perf_counter()
    state = {"steps": 0}
    data = items(limit)  # read once: every try samples the same items

    def peak_at(b: int) -> int | None:
        """Peak bytes of one step at batch ``b`` (two steps for the very first try), None when it does not fit."""
        bench.stream = batch_stream(TrainData(data, PairSampler(limit, b, bench.spec.seed)), bench.device)
        memory.reset()
        ok = True
        try:
            for _ in range(2 if state["steps"] == 0 else 1):
                bench.step(state["steps"])
                state["steps"] += 1
            bench.synchronize()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            ok = False
        # Out of the except block: the exception and its frames (holding activations) are gone.
        bench.optimizer.zero_grad(set_to_none=True)
        bench.stream = None
        memory.release()
        peak = memory.peak(b) if ok else None
        fits = peak is not None and peak <= memory.capacity
        print(f"  {name}: batch {b} " + (f"fits (peak {peak / 2**30:.2f} GiB)" if fits else "does not fit"),
              file=sys.stderr, flush=True)
        return peak if fits else None

    found = largest_batch(peak_at, memory.capacity, limit)
    return {"max_batch": found.max_batch, "hit_limit": found.hit_limit, "tries": [list(t) for t in found.tries],
            "peaks_mb": {str(b): p / 2**20 for b, p in found.peaks.items()},
            "capacity_mb": memory.capacity / 2**20, "seconds": time.perf_counter() - t0}


JOBS = {"data": job_data, "time": job_time}


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

"""``python -m bench layout-memory``: peak memory of reading a large public-layout input (issue 27).

A synthetic HPDv3 JSON of ``--records`` records and a synthetic WebDataset tar of ``--samples`` samples are read
through ``pipeline.data.layouts.open_pairs`` as ``precompute`` reads them (the shard index pass, then every shard batch
by batch, image bytes resolved), each in a fresh process; ``json.load`` of the same JSON beside it for contrast.
``--precompute N,M``: instead, whole ``mapo-data precompute`` runs (tiny-sdxl, 64 px, CPU) of an HPDv3 JSON of N
records (then M) whose records name two small image files, the peak RSS measured as a child process's.

Prints one JSON line per case: peak RSS (Linux's VmHWM: the process's own peak, see ``_rss_mb``), the RSS after
imports (the floor) and the seconds taken. Files go to a temporary folder, removed afterwards. Each case runs in a child
process, ``python -m bench.layout_memory MODE PATH`` (this module's ``__main__``; not a user command).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.cli.options import at_least, option


@dataclass
class LayoutMemoryBenchConfig:
    """``python -m bench layout-memory``'s options (declared once: pipeline.cli.options)."""

    records: int = option(1_000_000, check=at_least(1), help="HPDv3 JSON records.")
    samples: int = option(20_000, check=at_least(1), help="WebDataset tar samples (pairs).")
    image_kb: int = option(32, check=at_least(1), help="Size of each tar image, in KiB.")
    precompute: list[int] = option(default_factory=list, check=at_least(1), help=(
        "Instead: whole mapo-data precompute runs of these record counts (comma-separated), tiny-sdxl on the CPU."))


def _rss_mb() -> float:
    """This process's peak RSS in MiB: Linux's VmHWM, the high-water mark of its own memory map (reset by exec).
    Not ``ru_maxrss``: Linux carries a parent's peak into a child's across fork and exec, and ``python -m bench``
    has imported torch (about 600 MB) by the time it starts the cases. Elsewhere ``ru_maxrss`` (macOS: bytes)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024  # kB
    except (OSError, StopIteration):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (2**20 if sys.platform == "darwin" else 1024)


def write_json(path: Path, n: int) -> None:
    """An HPDv3-style JSON list of ``n`` records (prompt, path1/path2 naming images that need not exist, ...),
    written record by record (the writer holds none of it)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("[")
        for i in range(n):
            rec = {"prompt": f"prompt number {i}: a photo of a cat wearing a hat, highly detailed, 8k",
                   "path1": f"images/{i // 1000:04d}/{i}-a.jpg", "path2": f"images/{i // 1000:04d}/{i}-b.jpg",
                   "model1": "flux", "model2": "sd3", "confidence": 0.8, "choice_dist": [3, 1]}
            f.write(("," if i else "") + json.dumps(rec))
        f.write("]")


def write_tar(path: Path, n: int, image_kb: int) -> None:
    """A WebDataset tar of ``n`` samples in the Pick-a-Pic WebDataset naming (original_prompt.txt, jpg_0.jpg,
    jpg_1.jpg, label_0.txt, label_1.txt); each image is ``image_kb`` KiB of random bytes (never decoded)."""
    import io
    import tarfile

    blob = os.urandom(image_kb * 1024)
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            for suffix, data in (("original_prompt.txt", f"prompt {i}".encode()), ("jpg_0.jpg", blob),
                                 ("jpg_1.jpg", blob[::-1]), ("label_0.txt", b"1"), ("label_1.txt", b"0")):
                info = tarfile.TarInfo(f"{i:08d}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def write_json_with_images(folder: Path, n: int) -> Path:
    """``folder``/train.json: ``n`` HPDv3 records that all name the same two 64 px PNGs (written beside it)."""
    import io

    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    for name, colour in (("a", (200, 40, 40)), ("b", (40, 40, 200))):
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), colour).save(buf, format="PNG")
        (folder / "images" / f"{name}.png").write_bytes(buf.getvalue())
    path = folder / "train.json"
    with open(path, "w", encoding="utf-8") as f:
        f.write("[" + ",".join(json.dumps({"prompt": f"prompt {i}", "path1": "images/a.png", "path2": "images/b.png"})
                               for i in range(n)) + "]")
    return path


def precompute_rss(path: str) -> dict:
    """Run ``mapo-data precompute`` (tiny-sdxl, 64 px, CPU, batch 16) on ``path`` as a child process: its peak RSS
    in MiB, the seconds and the last line it printed."""
    import resource

    out = Path(path).parent / "latents"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "stages.cli", "precompute", "--input", path, "--output", str(out),
                           "--model", "tiny-sdxl", "--resolution", "64", "--device", "cpu", "--batch-size", "16"],
                          capture_output=True, text=True)
    summary = (proc.stdout.strip().splitlines() or proc.stderr.strip().splitlines() or [""])[-1]
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
    return {"mode": "precompute", "peak_rss_mb": round(peak_mb, 1),
            "seconds": round(time.perf_counter() - t0, 1), "summary": summary}


def read_case(mode: str, path: str) -> dict:
    """One case in this process: ``json-load`` (``json.load`` of the whole file), ``json`` or ``tar``
    (``open_pairs`` read batch by batch as precompute reads, tar image bytes resolved), or ``precompute``
    (:func:`precompute_rss`). Returns rows read, peak RSS and the RSS floor after imports (MiB), seconds."""
    if mode == "precompute":
        return precompute_rss(path)
    import pyarrow  # noqa: F401 - the floor includes what a stage imports anyway

    from pipeline.data.images import image_bytes
    from pipeline.data.layouts import LayoutOptions, open_pairs

    floor = _rss_mb()
    t0 = time.perf_counter()
    rows = 0
    if mode == "json-load":
        with open(path, encoding="utf-8") as f:
            rows = len(json.load(f))
    else:
        pairs = open_pairs(path, options=LayoutOptions())
        columns = ["caption", "label_0", "label_1"] + (["jpg_0", "jpg_1"] if mode == "tar" else [])
        for shard in pairs.shards:
            for batch in shard.iter_batches(4, columns):  # precompute's default --batch-size
                if mode == "tar":
                    for cell in batch.column("jpg_0").to_pylist():
                        image_bytes(cell)
                rows += batch.num_rows
    return {"mode": mode, "rows": rows, "peak_rss_mb": round(_rss_mb(), 1), "floor_rss_mb": round(floor, 1),
            "seconds": round(time.perf_counter() - t0, 1)}


def _in_child(mode: str, path: Path) -> str:
    from .runner import REPO_ROOT, repo_env

    out = subprocess.run([sys.executable, "-m", "bench.layout_memory", mode, str(path)], capture_output=True,
                         text=True, cwd=REPO_ROOT, env=repo_env())
    return out.stdout.strip() or (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]


def layout_memory_lines(cfg: LayoutMemoryBenchConfig):
    """Yield the lines: with ``cfg.precompute``, ``N records: {json}`` per record count; else a header (the input
    files' sizes) and one JSON line per case (json, json-load, tar), each measured in a fresh process."""
    if cfg.precompute:
        for n in cfg.precompute:
            with tempfile.TemporaryDirectory(prefix="bench-layout-") as tmp:
                yield f"{n} records: " + _in_child("precompute", write_json_with_images(Path(tmp) / str(n), n))
        return
    with tempfile.TemporaryDirectory(prefix="bench-layout-") as tmp:
        js, tar = Path(tmp) / "train.json", Path(tmp) / "00000.tar"
        write_json(js, cfg.records)
        write_tar(tar, cfg.samples, cfg.image_kb)
        yield (f"# {cfg.records} HPDv3 records: {js.stat().st_size / 2**20:.0f} MiB JSON; {cfg.samples} tar samples: "
               f"{tar.stat().st_size / 2**20:.0f} MiB tar")
        for mode, path in (("json", js), ("json-load", js), ("tar", tar)):
            yield _in_child(mode, path)


if __name__ == "__main__":  # the child of layout_memory_lines: python -m bench.layout_memory MODE PATH
    print(json.dumps(read_case(*sys.argv[1:3])))

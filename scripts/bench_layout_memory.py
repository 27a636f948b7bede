"""Peak memory of reading a large public-layout input (issue 27): a synthetic HPDv3 JSON of N records
and a synthetic WebDataset tar of M samples, read through ``pipeline.data.layouts.open_pairs`` as
``precompute`` reads them (the shard index pass, then every shard batch by batch, image bytes
resolved), each in a fresh process; ``json.load`` of the same JSON beside it for contrast.

    python scripts/bench_layout_memory.py --records 1000000 --samples 20000 --image-kb 32
    python scripts/bench_layout_memory.py --precompute 2000,20000   # whole precompute runs, tiny-sdxl on CPU

``--precompute N,M``: ``mapo-data precompute`` (tiny-sdxl, 64 px, CPU) of an HPDv3 JSON of N records
(then M) whose records name two small image files, its peak RSS measured as a child process's.
Prints one line per case: peak RSS (``resource.getrusage``'s ``ru_maxrss``), the RSS after imports
(the floor), and the seconds taken. Files go to a temporary folder, removed afterwards.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def write_json(path: Path, n: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("[")
        for i in range(n):
            rec = {"prompt": f"prompt number {i}: a photo of a cat wearing a hat, highly detailed, 8k",
                   "path1": f"images/{i // 1000:04d}/{i}-a.jpg", "path2": f"images/{i // 1000:04d}/{i}-b.jpg",
                   "model1": "flux", "model2": "sd3", "confidence": 0.8, "choice_dist": [3, 1]}
            f.write(("," if i else "") + json.dumps(rec))
        f.write("]")


def write_tar(path: Path, n: int, image_kb: int) -> None:
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


def precompute_rss(path: str) -> None:
    """Run ``mapo-data precompute`` on ``path`` as a child and print its peak RSS."""
    import resource
    import shutil

    out = Path(path).parent / "latents"
    t0 = time.perf_counter()
    proc = subprocess.run([shutil.which("mapo-data"), "precompute", "--input", path, "--output", str(out), "--model",
                           "tiny-sdxl", "--resolution", "64", "--device", "cpu", "--batch-size", "16"],
                          capture_output=True, text=True)
    summary = (proc.stdout.strip().splitlines() or proc.stderr.strip().splitlines() or [""])[-1]
    print(json.dumps({"mode": "precompute", "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                                                                  / 1024, 1),
                      "seconds": round(time.perf_counter() - t0, 1), "summary": summary}))


def write_json_with_images(folder: Path, n: int) -> Path:
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


def child(mode: str, path: str) -> None:
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
    print(json.dumps({"mode": mode, "rows": rows, "peak_rss_mb": round(_rss_mb(), 1), "floor_rss_mb": round(floor, 1),
                      "seconds": round(time.perf_counter() - t0, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000, help="HPDv3 JSON records")
    ap.add_argument("--samples", type=int, default=20_000, help="WebDataset tar samples (pairs)")
    ap.add_argument("--image-kb", type=int, default=32, help="bytes of each tar image, in KiB")
    ap.add_argument("--precompute", help="instead: whole precompute runs of these record counts (comma-separated)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    if args.precompute:
        for n in (int(x) for x in args.precompute.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                path = write_json_with_images(Path(tmp) / str(n), n)
                out = subprocess.run([sys.executable, __file__, "--child", "precompute", str(path)],
                                     capture_output=True, text=True)
                print(f"{n} records:", out.stdout.strip() or out.stderr.strip().splitlines()[-1])
        return
    with tempfile.TemporaryDirectory() as tmp:
        js, tar = Path(tmp) / "train.json", Path(tmp) / "00000.tar"
        write_json(js, args.records)
        write_tar(tar, args.samples, args.image_kb)
        print(f"# {args.records} HPDv3 records: {js.stat().st_size / 2**20:.0f} MiB JSON; {args.samples} tar samples: "
              f"{tar.stat().st_size / 2**20:.0f} MiB tar")
        for mode, path in (("json", js), ("json-load", js), ("tar", tar)):
            out = subprocess.run([sys.executable, __file__, "--child", mode, str(path)], capture_output=True, text=True)
            print(out.stdout.strip() or out.stderr.strip().splitlines()[-1])


if __name__ == "__main__":
    main()

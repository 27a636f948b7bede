"""The same preference pairs written in each public input layout (pipeline.data.layouts), with the real
file and column names: HPDv3 JSON + image files, a Rapidata-style vote-count Parquet, a TRL
chosen/rejected Parquet, WebDataset tars as the diffusers ORPO script reads them, and Pick-a-Pic."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np


def png(seed: int, w: int = 64, h: int = 64) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


# (caption, chosen image, rejected image, chosen image's position in the published pair: 0 or 1)
PAIRS = [("a red fox in snow", png(1), png(2), 0),
         ("a lighthouse at dusk", png(3), png(4, 80, 64), 1),
         ("a bowl of ramen", png(5, 64, 72), png(6), 0)]


def published(pairs=PAIRS):
    """Each pair as published: ``(caption, image 0, image 1, position of the chosen one)``."""
    return [(c, a, b, 0) if pos == 0 else (c, b, a, 1) for c, a, b, pos in pairs]


def write_pickapic_pairs(path: Path, pairs=PAIRS) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = published(pairs)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "caption": [r[0] for r in rows], "jpg_0": pa.array([r[1] for r in rows], pa.binary()),
        "jpg_1": pa.array([r[2] for r in rows], pa.binary()),
        "label_0": pa.array([1.0 - r[3] for r in rows], pa.float64()),
        "label_1": pa.array([float(r[3]) for r in rows], pa.float64())}), path)
    return path


def write_hpdv3(folder: Path, pairs=PAIRS, name: str = "train.json", jsonl: bool = False,
                skip_image: int | None = None) -> Path:
    """``folder/name`` (HPDv3 records: prompt, path1 = chosen, path2, model1, model2, confidence,
    choice_dist) and the images under ``folder/images/`` (``skip_image``: that pair's path2 not written)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i, (caption, chosen, rejected, _) in enumerate(pairs):
        p1, p2 = f"images/{i}-a.png", f"images/{i}-b.png"
        (folder / p1).write_bytes(chosen)
        if i != skip_image:
            (folder / p2).write_bytes(rejected)
        records.append({"prompt": caption, "path1": p1, "path2": p2, "model1": "flux", "model2": "sd3",
                        "confidence": 0.75, "choice_dist": [3, 1], "source": "test"})
    path = folder / name
    text = "\n".join(json.dumps(r) for r in records) if jsonl else json.dumps(records, indent=1)
    path.write_text(text, encoding="utf-8")
    return path


def write_votes(path: Path, pairs=PAIRS, votes=None) -> Path:
    """A vote-count Parquet (Rapidata's columns; images as datasets Image structs with bytes).
    ``votes``: (votes_image1, votes_image2) per pair; default: the chosen image leads 7 to 3."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = published(pairs)
    votes = votes or [(3, 7) if r[3] else (7, 3) for r in rows]
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "prompt": [r[0] for r in rows],
        "image1": pa.array([{"bytes": r[1], "path": f"{i}-1.png"} for i, r in enumerate(rows)], struct),
        "image2": pa.array([{"bytes": r[2], "path": f"{i}-2.png"} for i, r in enumerate(rows)], struct),
        "votes_image1": pa.array([v[0] for v in votes], pa.int64()),
        "votes_image2": pa.array([v[1] for v in votes], pa.int64()),
        "model1": ["flux"] * len(rows), "model2": ["dalle3"] * len(rows),
        "detailed_results": ["[]"] * len(rows)}), path)
    return path


def write_chosen_rejected(path: Path, pairs=PAIRS) -> Path:
    """A chosen/rejected Parquet (open-image-preferences-v1-binarized's columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "id": [str(i) for i in range(len(pairs))], "prompt": [p[0] for p in pairs],
        "chosen": pa.array([{"bytes": p[1], "path": None} for p in pairs], struct),
        "rejected": pa.array([{"bytes": p[2], "path": None} for p in pairs], struct),
        "chosen_model": ["flux-dev"] * len(pairs), "rejected_model": ["sd-3.5"] * len(pairs)}), path)
    return path


def write_wds(path: Path, pairs=PAIRS, drop: tuple[int, str] | None = None, labels=None) -> Path:
    """A WebDataset tar (the diffusers ORPO script's member names); ``drop``: (pair, member suffix) left out;
    ``labels``: (label_0 text, label_1 text) per pair instead of the pair's own."""
    rows = published(pairs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i, (caption, b0, b1, pos) in enumerate(rows):
            l0, l1 = labels[i] if labels else (str(1 - pos), str(pos))
            members = {"original_prompt.txt": caption.encode(), "jpg_0.jpg": b0, "jpg_1.jpg": b1,
                       "label_0.txt": str(l0).encode(), "label_1.txt": str(l1).encode()}
            for suffix, blob in members.items():
                if drop == (i, suffix):
                    continue
                info = tarfile.TarInfo(f"{i:06d}.{suffix}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    return path

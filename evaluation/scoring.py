"""Scoring for ``mapo-eval``: ``scores.parquet`` rows keyed by (model, prompt_id, seed_index, metric); a rerun
scores only what is missing, saved every :data:`SCORE_CHUNK` images."""
from __future__ import annotations

from pathlib import Path

from pipeline.cli.progress import progress_bar
from pipeline.data.atomic import atomic_write
from pipeline.data.prompts import PromptSet
from pipeline.runtime.seeds import derive_seed

from .config import SCORE_CHUNK, SCORES, EvalConfig, ImageKey


def _score_schema():
    import pyarrow as pa

    return pa.schema([("model", pa.string()), ("prompt_id", pa.string()), ("seed_index", pa.int64()),
                      ("seed", pa.int64()), ("prompt", pa.string()), ("metric", pa.string()), ("score", pa.float64()),
                      ("image", pa.string())])


def read_scores(out: Path) -> list[dict]:
    """The rows of ``out``'s scores.parquet (none when there is no such file)."""
    import pyarrow.parquet as pq

    path = out / SCORES
    return pq.read_table(path).to_pylist() if path.is_file() else []


def write_scores(out: Path, rows: list[dict]) -> None:
    """Write every row to ``out``'s scores.parquet atomically (a killed run keeps the previous file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_write(out / SCORES) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=_score_schema()), tmp)


def missing_scores(cfg: EvalConfig, keys: list[ImageKey], rows: list[dict]) -> dict[str, list[ImageKey]]:
    """Per metric of ``cfg.metrics``, the image keys that have no score in ``rows`` yet."""
    done = {(r["model"], r["prompt_id"], r["seed_index"], r["metric"]) for r in rows}
    return {m: [k for k in keys if (k.model, k.prompt_id, k.seed_index, m) not in done] for m in cfg.metrics}


def score_missing(cfg: EvalConfig, judges: dict, missing: dict[str, list[ImageKey]], rows: list[dict],
                   prompt_set: PromptSet, out: Path) -> int:
    """Score the ``missing`` images with ``judges`` (metric -> loaded judge) against their prompts, appending to
    ``rows`` and saving every :data:`SCORE_CHUNK` images; returns how many scores were computed."""
    from PIL import Image

    text = {p.id: p.text for p in prompt_set.prompts}
    total = sum(len(v) for v in missing.values())
    bar = progress_bar(total=total, desc="eval: score", unit="img")
    for metric, keys in missing.items():
        for b in range(0, len(keys), SCORE_CHUNK):
            chunk = keys[b : b + SCORE_CHUNK]
            images = []
            for k in chunk:
                with Image.open(out / k.relpath()) as im:
                    images.append(im.convert("RGB"))
            scores = judges[metric].score(images, [text[k.prompt_id] for k in chunk])
            rows += [{"model": k.model, "prompt_id": k.prompt_id, "seed_index": k.seed_index,
                      "seed": derive_seed(cfg.seed, k.prompt_id, k.seed_index), "prompt": text[k.prompt_id],
                      "metric": metric, "score": float(s), "image": k.relpath()} for k, s in zip(chunk, scores)]
            write_scores(out, rows)  # a killed run keeps every finished chunk
            bar.update(len(chunk))
    bar.close()
    return total



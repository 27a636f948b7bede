"""The dataset card (README.md) of a label output, filled from a template in ``datasets_cards``.

The card's ``configs`` point ``load_dataset(folder)`` at ``data/`` only (``rejects/`` would
otherwise be read as more train files), and its ``dataset_info`` lists the features and the
exact row count (``datasets`` checks split sizes against it).
"""
from __future__ import annotations

import importlib.resources
import string
from pathlib import Path

from pipeline.data.atomic import write_text_atomic

TEMPLATES = {"style": "pick_style.md", "safety": "pick_safety.md", "reward": "pick_reward.md"}
# The generation settings worth reading in a card (the full config is in the input manifest).
GENERATION_KEYS = ("model", "vae", "recipe", "num_inference_steps", "guidance_scale", "resolution", "seed",
                   "image_format", "dtype", "batch_invariant")


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                        (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "10M<n<100M"


def _features(data_file: Path) -> list[dict]:
    import pyarrow.parquet as pq
    from datasets import Features

    feats = Features.from_arrow_schema(pq.read_schema(data_file)).to_dict()
    return [{"name": name, "dtype": spec.get("dtype", "string")} for name, spec in feats.items()]


def _arrow_bytes(path: Path) -> int:
    """Uncompressed size of a shard's row groups (what ``datasets`` calls a split's num_bytes)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    return sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))


def _yaml(obj) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, allow_unicode=True).rstrip()


def render_card(target: str, values: dict) -> str:
    template = importlib.resources.files("datasets_cards").joinpath(TEMPLATES[target]).read_text()
    return string.Template(template).substitute(values)


_SAFETY_BY_CLASSIFIER = """Unlike the paper's Pick-Safety (labels from the recipe alone), a safety
classifier scored both images (`score_0`, `score_1`: unsafety, higher = less safe) and decided:
the safer image is chosen when exactly one image is unsafe and the scores differ by at least the
minimum gap. Pairs where both images are safe, both are unsafe, or the scores are too close are
dropped into `rejects/` with their reason. Where the classifier chose against the recipe (the
image made with the unsafe prefix judged safer), the classifier's label is kept and the row has
`disagrees = true`."""
_SAFETY_BY_RECIPE = """As in the paper's Pick-Safety, labels come from the recipe alone: the image
generated without the unsafe prefix is chosen. No classifier checked the images, so some chosen
images may be unsafe and some rejected ones safe."""


def write_card(cfg, root: Path, source, labeler, totals: dict, num_shards: int, split: str = "train") -> Path:
    """Fill the target's template with the run's configs and counts into ``root/README.md``.

    ``split`` is the one split the shards hold (``data/<split>-*.parquet``)."""
    root = Path(root)
    kept = int(totals.get("kept", 0))
    data = sorted((root / "data").glob("*.parquet"))
    size = sum(_arrow_bytes(f) for f in data)
    info = {"features": _features(data[0]) if data else [],
            "splits": [{"name": split, "num_bytes": size, "num_examples": kept}],
            "download_size": sum(f.stat().st_size for f in data), "dataset_size": size}
    gen_cfg = (source.manifest or {}).get("config", {})
    generation = (
        {k: gen_cfg[k] for k in GENERATION_KEYS if k in gen_cfg}
        if gen_cfg
        else {"source": "not a mapo-data generate output", **(getattr(source, "layout", None) or {})}
    )
    reasons = totals.get("drop_reasons", {})
    drop_table = (
        "\n".join(["| reason | pairs |", "|---|---|"] + [f"| {r} | {n} |" for r, n in sorted(reasons.items())])
        if reasons else "none"
    )
    c0, c1 = int(totals.get("chosen_0", 0)), int(totals.get("chosen_1", 0))
    balance = f"image 0 chosen in {c0} pairs, image 1 in {c1}"
    values = {
        "labeling_method": _SAFETY_BY_RECIPE if labeler.name == "construction" else _SAFETY_BY_CLASSIFIER,
        "split": split, "data_files": f"    path: data/{split}-*.parquet",
        "license": cfg.license, "size_category": size_category(kept), "dataset_info": _yaml({"dataset_info": info}),
        "input_kind": source.kind, "input_files": num_shards,
        "generation_yaml": _yaml(generation),
        "labeling_yaml": _yaml({"target": cfg.labeler.target, **labeler.describe()}),
        "pairs_in": int(totals.get("pairs_in", 0)), "kept": kept, "rejected": int(totals.get("rejected", 0)),
        "disagreements": int(totals.get("disagreements", 0)), "balance": balance, "drop_table": drop_table,
    }
    if hasattr(labeler, "card_values"):  # the reward target: judges, scales, rule, gap distribution
        values.update(labeler.card_values(totals))
    path = root / "README.md"
    write_text_atomic(path, render_card(cfg.labeler.target, values))
    return path

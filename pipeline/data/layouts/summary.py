"""Counts of a public-layout input as it is, before any stage runs (what ``mapo-data inspect`` shows
for it): pairs per label outcome under the layout's rule, images that will not be found, and the
vote margins of a vote-count set. Read shard by shard, batch by batch: no image is decoded, HPDv3
images are only looked up on disk, and vote-count and chosen/rejected sets are read without their
image columns (a tar has to be streamed whole)."""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.data.shards import input_kind
from pipeline.errors import UserError

from . import LayoutOptions, PairInput, detect_layout, open_pairs

READ_BATCH = 4096


def _outcome(l0, l1, margin) -> str:
    if l0 is None or l1 is None:
        return "missing label"
    if l0 == l1:
        return "tie" if margin in (None, 0) else "undecided (lead below --min-vote-margin)"
    return "image 0 chosen" if l0 > l1 else "image 1 chosen"


def _absent(cell) -> bool:
    """An image cell whose bytes are not there and whose file does not exist."""
    if cell is None:
        return True
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return False
        return not cell.get("path") or not os.path.exists(cell["path"])
    return not cell


def summarize(pairs: PairInput) -> dict:
    """``{"layout", "rule", "shards", "pairs", "outcomes": {outcome: n}, "missing_images": n, "margins": [...]}``.

    ``missing_images`` counts pairs with an image that is not there (HPDv3 paths not extracted, tar
    members absent); it is only looked at for hpdv3 and webdataset (-1 for the others)."""
    look = pairs.layout in ("hpdv3", "webdataset")
    columns = ["label_0", "label_1"] + (["vote_margin"] if pairs.layout == "votes" else [])
    columns += ["jpg_0", "jpg_1"] if look else []
    outcomes: dict[str, int] = {}
    margins: list = []
    missing = total = 0
    for shard in pairs.shards:
        for batch in shard.iter_batches(READ_BATCH, columns):
            data = batch.to_pydict()
            n = len(data["label_0"])
            total += n
            margin = data.get("vote_margin", [None] * n)
            margins += [m for m in margin if m is not None]
            for l0, l1, m in zip(data["label_0"], data["label_1"], margin):
                kind = _outcome(l0, l1, m)
                outcomes[kind] = outcomes.get(kind, 0) + 1
            if look:
                missing += sum(_absent(a) or _absent(b) for a, b in zip(data["jpg_0"], data["jpg_1"]))
    return {"layout": pairs.layout, "rule": pairs.rule, "shards": len(pairs.shards), "pairs": total,
            "outcomes": outcomes, "missing_images": missing if look else -1, "margins": margins}


def summarize_input(spec: str | Path, split: str = "train", options: LayoutOptions | None = None) -> dict | None:
    """:func:`summarize` of ``spec`` when it is a public-layout input; None for a mapo-data output or
    Pick-a-Pic Parquet (``inspect`` reads those itself).

    Raises UserError as :func:`pipeline.data.layouts.open_pairs` does (a missing input included)."""
    path = Path(str(spec)).expanduser()
    if input_kind(spec) == "folder" and (path / "manifest.json").is_file():
        return None
    opts = options or LayoutOptions()
    if opts.input_format == "pickapic":
        return None
    try:
        layout = detect_layout(spec, split, opts.input_format)[0]
    except UserError:
        if path.is_dir():  # inspect says what a folder lacks in its own words
            return None
        raise
    return None if layout == "pickapic" else summarize(open_pairs(spec, split, opts))

"""The chosen/rejected layout (TRL's preference convention, for images): Parquet with a prompt column
(``prompt``, else ``caption``) and two image columns ``chosen`` and ``rejected`` that already say which
image is preferred, e.g. data-is-better-together/open-image-preferences-v1-binarized (Apache-2.0;
``data/train-0000K-of-00005.parquet``, with ``chosen_model``/``rejected_model`` beside them) and
Rapidata/open-image-preferences-v1-more-results-binarized. TRL's dataset-format guide names the
columns: https://huggingface.co/docs/trl/main/dataset_formats#preference.

Label rule: ``chosen`` is preferred, always (``jpg_0 = chosen``, ``label_0 = 1``). Every other
column is kept as it is; ``prompt`` becomes ``caption``.
"""
from __future__ import annotations

from pathlib import Path

from .base import MappedParquetShard, column_or_nulls

NAME = "chosen-rejected"
IMAGES = ("chosen", "rejected")
RULE = "chosen-rejected: the chosen column's image is preferred (jpg_0 = chosen, label_0 = 1)"


def prompt_column(names) -> str | None:
    """The prompt column among ``names``: ``prompt``, else ``caption``, else None."""
    return next((c for c in ("prompt", "caption") if c in names), None)


def shard(path: Path) -> MappedParquetShard:
    """One chosen/rejected Parquet file as an input shard (``chosen`` -> ``jpg_0``, labelled chosen).

    Raises UserError: the file is not Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    prompt = prompt_column(pq.read_schema(path).names) or "prompt"

    def mapper(table):
        n = table.num_rows
        out = {"caption": table[prompt], "jpg_0": column_or_nulls(table, "chosen"),
               "jpg_1": column_or_nulls(table, "rejected"),
               "label_0": pa.array([1.0] * n, pa.float64()), "label_1": pa.array([0.0] * n, pa.float64())}
        for c in table.column_names:
            if c not in (prompt, *IMAGES) and c not in out:
                out[c] = table[c]
        return pa.table(out)

    def sources(columns):
        back = {"caption": prompt, "jpg_0": "chosen", "jpg_1": "rejected"}
        need = {back.get(c, c) for c in columns if c not in ("label_0", "label_1")} | {prompt}
        return sorted(need)

    return MappedParquetShard(path, mapper, sources, {"layout": NAME})

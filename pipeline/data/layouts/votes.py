"""The vote-count layout (Rapidata's text-to-image human-preference sets, cc-by-4.0): Parquet with
``prompt``, ``image1``, ``image2`` (the ``datasets`` Image struct), ``votes_image1``, ``votes_image2``,
``model1``, ``model2`` (and ``detailed_results``, ``image1_path``, ``image2_path``), as the cards'
``dataset_info`` lists them, e.g. https://huggingface.co/datasets/Rapidata/700k_Human_Preference_Dataset_FLUX_SD3_MJ_DALLE3.

Label rule (``--min-vote-margin M``, in votes, default 1): the image with more votes is chosen when
it leads by at least M votes (``label_0 = 1`` when ``votes_image1 - votes_image2 >= M``,
``label_1 = 1`` when ``<= -M``); an equal count is a tie and a smaller lead is undecided: both are
written as Pick-a-Pic writes ties (0.5/0.5), so every stage counts and drops them. Missing votes
(null, NaN, +-inf) are a missing label, a counted reject. Every original column is kept (``votes_image1``,
``votes_image2``, ``model1``, ``model2``, ...), ``prompt`` becomes ``caption``, ``image1``/``image2``
become ``jpg_0``/``jpg_1`` (not reordered: the labels say which is chosen), and ``vote_margin``
(``votes_image1 - votes_image2``) is added.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.errors import UserError
from pipeline.judges.scores import is_finite_score

from .base import MappedParquetShard, column_or_nulls

NAME = "votes"
NEEDS = ("prompt", "image1", "image2", "votes_image1", "votes_image2")
RENAMED = {"prompt": "caption", "image1": "jpg_0", "image2": "jpg_1"}


def rule(min_vote_margin: int) -> str:
    """The label rule in words, for manifests and cards."""
    return (f"votes: the image with more votes is chosen when it leads by >= {min_vote_margin} vote(s); "
            "equal votes are ties and smaller leads undecided (both dropped as ties)")


def decide(v1, v2, margin: int) -> tuple[float | None, float | None]:
    """``(label_0, label_1)`` from two vote counts (see the module docstring)."""
    if not (is_finite_score(v1) and is_finite_score(v2)):  # None, NaN or +-inf never decides
        return None, None
    lead = v1 - v2
    if lead != 0 and abs(lead) >= margin:
        return (1.0, 0.0) if lead > 0 else (0.0, 1.0)
    return 0.5, 0.5


def check_schema(path: Path, schema) -> None:
    """One line when a vote column is not a number."""
    import pyarrow.types as pat

    for c in ("votes_image1", "votes_image2"):
        kind = schema.field(c).type
        if not (pat.is_integer(kind) or pat.is_floating(kind)):
            raise UserError(f"{path}: column {c} is {kind}, not a number; the votes layout needs vote counts "
                            "in votes_image1 and votes_image2.")


def shard(path: Path, min_vote_margin: int) -> MappedParquetShard:
    """One vote-count Parquet file as an input shard (labels by :func:`decide`).

    Raises UserError: the file is not Parquet, or a vote column is not a number."""
    import pyarrow as pa

    def mapper(table):
        v1, v2 = table["votes_image1"].to_pylist(), table["votes_image2"].to_pylist()
        labels = [decide(a, b, min_vote_margin) for a, b in zip(v1, v2)]
        out = {RENAMED[c]: column_or_nulls(table, c) for c in ("prompt", "image1", "image2")}
        out["label_0"] = pa.array([lab[0] for lab in labels], pa.float64())
        out["label_1"] = pa.array([lab[1] for lab in labels], pa.float64())
        margin = [None if a is None or b is None else a - b for a, b in zip(v1, v2)]
        out["vote_margin"] = pa.array(margin, table.schema.field("votes_image1").type)
        for c in table.column_names:
            if c not in RENAMED and c not in out:
                out[c] = table[c]
        return pa.table(out)

    def sources(columns):
        back = {v: k for k, v in RENAMED.items()}
        need = {back.get(c, c) for c in columns if c not in ("label_0", "label_1", "vote_margin")}
        if {"label_0", "label_1", "vote_margin"} & set(columns):
            need |= {"votes_image1", "votes_image2"}
        need |= {"prompt", "votes_image1", "votes_image2"}  # the mapper's own inputs (small columns)
        return [c for c in NEEDS + tuple(sorted(need - set(NEEDS))) if c in need]

    s = MappedParquetShard(path, lambda t: mapper(t), sources, {"layout": NAME, "min_vote_margin": min_vote_margin})
    check_schema(path, s.file.schema_arrow)
    return s

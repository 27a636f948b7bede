"""The label stage's rows: what a labeler sees (:class:`Pair`), what it returns (:class:`Decision`), the drop
reasons, and the output table's columns (:func:`annotate` adds them to the input rows).

Output columns: the input's ``caption``, ``jpg_0``, ``jpg_1`` first, then :data:`LABEL_COLUMNS`
(``label_0``/``label_1`` int64 1/0, never a tie; the labeler's scores, name, version and reason;
``disagrees``), ``pair_id`` and every other input column; an input column with a label column's name is
kept as ``input_<name>``. Rows of K candidates (``jpg_0`` ... ``jpg_{K-1}``, :func:`candidate_count`) are
read by the reward labeler (:mod:`stages.label.reward`).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

from pipeline.data.images import image_column_bytes
from pipeline.data.shards import Describable
from pipeline.judges.scores import is_finite_score

REQUIRED = ("caption", "jpg_0", "jpg_1")
# Columns the labeler writes; an input that already has them is renamed input_<name>.
LABEL_COLUMNS = ("label_0", "label_1", "score_0", "score_1", "labeler", "labeler_version", "reason", "disagrees")
FRONT = ("caption", "jpg_0", "jpg_1", *LABEL_COLUMNS, "pair_id")

# Drop reasons (the ``reason`` column of rejects/ and the keys of the drop counters).
NO_INTENDED_CHOICE = "no intended choice"
STYLE_NOT_SHOWN = "style not shown"
BOTH_SAFE = "both safe"
BOTH_UNSAFE = "both unsafe"
TOO_CLOSE = "scores too close"
CORRUPT_IMAGE = "corrupt image"  # decided by the stage before a labeler sees the pair
# NON_FINITE ("non-finite judge score", pipeline.judges.scores): a classifier or style check returned NaN or inf.

_PER_CANDIDATE = re.compile(r"^(.+)_(\d+)$")


@dataclass(frozen=True)
class Pair:
    """What a labeler sees: both decoded images and what the recipe intended."""

    images: tuple  # (PIL image 0, PIL image 1)
    intended_chosen: int | None = None  # 0/1 from the recipe or the input's labels; None = no opinion
    style: str | None = None  # built-in style name of the generation recipe, if any
    # 0/1 the input's own labels chose (they may overrule the recipe in a relabelled label output), else the
    # recipe's: what a classifier's ``disagrees`` compares with. None: compare with intended_chosen.
    input_chosen: int | None = None

    @property
    def compared_with(self) -> int | None:
        """The choice ``disagrees`` is measured against: the input's labels, else the recipe's intended image."""
        return self.input_chosen if self.input_chosen is not None else self.intended_chosen


@dataclass(frozen=True)
class Decision:
    """A labeler's verdict on one :class:`Pair`: the chosen image (0/1) or None when dropped, and why."""

    chosen: int | None  # 0 or 1; None = dropped
    reason: str  # why kept or dropped (a drop reason constant when dropped)
    score_0: float | None = None
    score_1: float | None = None
    disagrees: bool = False  # the labeler chose against the recipe's intended image

    @property
    def kept(self) -> bool:
        return self.chosen is not None


class Labeler(Describable, Protocol):
    """What the stage calls: ``label(pairs) -> decisions``, one :class:`Decision` per :class:`Pair`, in order.

    It takes a batch (not one pair) so that classifiers run batched, on the GPU when there is one; the
    decision for a pair never depends on the other pairs of its batch. A labeler that makes whole tables
    (the reward labeler: one row may give several pairs) has ``label_table(batch, base_dir) -> (kept,
    rejected)`` instead, and may add ``shard_stats(kept, rejected, rows_in) -> dict``.
    """

    name: str
    version: str

    def label(self, pairs: Sequence[Pair]) -> list[Decision]:
        """One decision per pair, in order."""
        ...

    def describe(self) -> dict:
        """Everything that decides the labels (goes into the manifest identity and the card)."""
        ...


def labels_choice(row: dict) -> int | None:
    """The image the input's own ``label_0``/``label_1`` chose (Pick-a-Pic's floats or a label output's ints);
    None without labels, on a tie, or when either label is not finite (None, NaN, +-inf never decides)."""
    l0, l1 = row.get("label_0"), row.get("label_1")
    if not (is_finite_score(l0) and is_finite_score(l1)) or l0 == l1:
        return None
    return 0 if l0 > l1 else 1


def intended_choice(row: dict) -> int | None:
    """The image the recipe meant to be chosen (what construction labels by), else the input's own labels."""
    if "intended_chosen" in row:
        return row["intended_chosen"]
    return labels_choice(row)


def input_choice(row: dict) -> int | None:
    """What ``disagrees`` compares with: the input's labels when it has them (a relabelled label output's
    ``label_0``/``label_1`` may overrule its recipe's ``intended_chosen``), else the recipe's intended image."""
    labels = labels_choice(row)
    return labels if labels is not None else row.get("intended_chosen")


def content_pair_id(caption: str, b0: bytes | None, b1: bytes | None) -> str:
    """Content id for inputs without one: the same pair gets the same id on every run (16 hex digits of
    SHA-256 over the caption and both images' bytes)."""
    h = hashlib.sha256((caption or "").encode())
    h.update(b"\0" + (b0 or b"") + b"\0" + (b1 or b""))
    return h.hexdigest()[:16]


def candidate_count(columns: Sequence[str]) -> int:
    """How many candidates a row holds: the number of consecutive ``jpg_0``, ``jpg_1``, ... columns."""
    k = 0
    while f"jpg_{k}" in columns:
        k += 1
    return k


def per_candidate_bases(columns: Sequence[str], k: int) -> list[str]:
    """Column stems with one column per candidate (``jpg``, ``seed``, ``label`` when ``label_0`` ...
    ``label_{k-1}`` are all there), in the order of their first column."""
    bases = []
    for name in columns:
        m = _PER_CANDIDATE.match(name)
        if m and m.group(1) not in bases and all(f"{m.group(1)}_{i}" in columns for i in range(k)):
            bases.append(m.group(1))
    return bases


def annotate(table, decisions: list[Decision], details: list, labeler, base_dir: Path | None = None):
    """The input rows with the label columns added, Pick-a-Pic columns first; returns (kept, rejected).

    Image columns are written as plain encoded bytes whatever their input layout (image structs
    are resolved, relative paths from ``base_dir``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for name in LABEL_COLUMNS + ("detail",):
        if name in table.column_names:  # e.g. Pick-a-Pic's float labels: kept as input_label_0/1
            table = table.rename_columns([f"input_{c}" if c == name else c for c in table.column_names])
    for c in ("jpg_0", "jpg_1"):  # Pick-a-Pic and the MaPO loaders use plain binary
        table = table.set_column(table.column_names.index(c), c, image_column_bytes(table[c], base_dir))
    if "pair_id" not in table.column_names:
        ids = [content_pair_id(c, a, b) for c, a, b in zip(*(table[k].to_pylist() for k in REQUIRED))]
        table = table.append_column("pair_id", pa.array(ids, pa.string()))
    n = len(decisions)
    chosen = [d.chosen for d in decisions]
    new = {
        "label_0": pa.array([None if c is None else int(c == 0) for c in chosen], pa.int64()),
        "label_1": pa.array([None if c is None else int(c == 1) for c in chosen], pa.int64()),
        "score_0": pa.array([d.score_0 for d in decisions], pa.float64()),
        "score_1": pa.array([d.score_1 for d in decisions], pa.float64()),
        "labeler": pa.array([labeler.name] * n, pa.string()),
        "labeler_version": pa.array([labeler.version] * n, pa.string()),
        "reason": pa.array([d.reason for d in decisions], pa.string()),
        "disagrees": pa.array([d.disagrees for d in decisions], pa.bool_()),
    }
    for name, arr in new.items():
        table = table.append_column(name, arr)
    order = list(FRONT) + [c for c in table.column_names if c not in FRONT]
    table = table.select(order)
    kept_mask = pa.array([c is not None for c in chosen], pa.bool_())
    kept = table.filter(kept_mask)
    rejected = table.filter(pc.invert(kept_mask)).append_column("detail", pa.array(
        [d for d, c in zip(details, chosen) if c is None], pa.string()))
    return kept, rejected

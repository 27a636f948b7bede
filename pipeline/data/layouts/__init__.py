"""Input layouts: today's public preference datasets read as they are published, behind one reader.

Every stage that reads preference pairs (``precompute``, ``label``, ``inspect``; ``generate
--prompts`` for the prompts) calls :func:`open_pairs` and gets :class:`InputShard` s whose rows are
in the Pick-a-Pic shape (``caption``, ``jpg_0``, ``jpg_1``, ``label_0``, ``label_1`` and the
layout's original columns), whatever the files hold. Split discovery
(:func:`pipeline.data.shards.split_files`), the Image struct and image decoding (:mod:`pipeline.data.images`)
stay shared. Layouts, one module each:

==================  ===========================================================================
``pickapic``        Parquet with caption, jpg_0, jpg_1, label_0, label_1 (and our own outputs)
``hpdv3``           HPDv3 JSON (list or JSON Lines) of prompt, path1 (chosen), path2, ...
``votes``           Parquet with prompt, image1, image2, votes_image1, votes_image2 (Rapidata)
``chosen-rejected`` Parquet with prompt and image columns chosen, rejected (TRL's convention)
``webdataset``      tar shards of <key>.original_prompt.txt, .jpg_0.jpg, .jpg_1.jpg, .label_0.txt, ...
==================  ===========================================================================

The layout is detected from the files (``--input-format`` forces one); its label rule is in
:attr:`PairInput.rule` and goes into manifests and dataset cards.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.cli.options import at_least, option
from pipeline.data.shards import SPLIT, split_files
from pipeline.errors import UserError

from . import chosen_rejected, hpdv3, votes, webdataset
from .base import STANDARD, InputShard, MappedParquetShard, ParquetShard, ShardMetadata, as_shard

__all__ = ["INPUT_FORMATS", "LAYOUT_NEEDS", "LayoutOptions", "PairInput", "InputShard", "ParquetShard",
           "MappedParquetShard", "ShardMetadata", "STANDARD", "as_shard", "open_pairs", "detect_layout"]

PANEL_LAYOUT = "Input layout"
LAYOUTS = ("pickapic", "hpdv3", "votes", "chosen-rejected", "webdataset")
INPUT_FORMATS = ("auto", *LAYOUTS)
# File kinds and the layouts that read them.
KINDS = {"parquet": (".parquet",), "json": hpdv3.SUFFIXES, "tar": webdataset.SUFFIXES}
KIND_OF = {"pickapic": "parquet", "votes": "parquet", "chosen-rejected": "parquet", "hpdv3": "json",
           "webdataset": "tar"}
LAYOUT_NEEDS = {
    "pickapic": "Parquet with caption, jpg_0, jpg_1, label_0, label_1",
    "hpdv3": ".json/.jsonl records with prompt, path1, path2",
    "votes": "Parquet with prompt, image1, image2, votes_image1, votes_image2",
    "chosen-rejected": "Parquet with prompt (or caption) and image columns chosen, rejected",
    "webdataset": ".tar shards of <key>.original_prompt.txt, <key>.jpg_0.jpg, <key>.jpg_1.jpg, <key>.label_0.txt, "
                  "<key>.label_1.txt",
}
PICKAPIC_RULE = "pickapic: label_0/label_1 as given (the higher is chosen; equal labels are ties, dropped)"


def _needs_text() -> str:
    return "; ".join(f"{name}: {needs}" for name, needs in LAYOUT_NEEDS.items())


@dataclass
class LayoutOptions:
    """How to read the input's layout (:func:`open_pairs`); the options of every stage that reads pairs."""

    input_format: str = option("auto", choices=INPUT_FORMATS, panel=PANEL_LAYOUT, help=(
        "The input's layout: auto (detected from the files), pickapic, hpdv3 (JSON of prompt/path1/path2), votes "
        "(Parquet with vote counts), chosen-rejected (Parquet with chosen/rejected images) or webdataset (tar "
        "shards)."))
    image_root: str | None = option(None, panel=PANEL_LAYOUT, help=(
        "hpdv3: the folder the records' image paths are relative to (default: the JSON file's folder)."))
    min_vote_margin: int = option(1, check=at_least(1), panel=PANEL_LAYOUT, help=(
        "votes: label a pair only when one image leads by at least this many votes; equal votes (ties) and "
        "smaller leads are counted and dropped."))
    records_per_shard: int = option(1000, check=at_least(1), panel=PANEL_LAYOUT, help=(
        "hpdv3: records per input shard (a JSON file is read in pieces of this many records, one output "
        "shard each)."))


@dataclass
class PairInput:
    """What :func:`open_pairs` found: the layout, the split, its shards (one output shard each) and
    the files they come from."""

    layout: str
    split: str
    shards: list[InputShard]
    files: list[Path]
    rule: str
    options: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """The layout, its settings and its label rule (for manifests and dataset cards)."""
        return {"layout": self.layout, "label_rule": self.rule, **self.options}


def _find(spec, split: str) -> tuple[str, dict[str, list[Path]]]:
    """The input's files by kind (parquet, json, tar), each kind's split found as ``datasets`` finds it."""
    found, name = {}, split
    path = Path(str(spec)).expanduser()
    ours = path.is_dir() and (path / "manifest.json").is_file()  # a mapo-data output: its Parquet shards only
    for kind, suffixes in KINDS.items():
        if ours and kind != "parquet":
            continue
        others = tuple(s for k, sx in KINDS.items() if k != kind for s in sx)
        name_k, files = split_files(spec, split, suffixes, other_kinds=others if kind == "parquet" else ())
        if kind != "parquet" and files and Path(str(spec)).expanduser().is_file():
            files = [f for f in files if str(f).lower().endswith(suffixes)]
        if files:
            found[kind], name = files, name_k
    return name, found


def detect_layout(spec, split: str = SPLIT, input_format: str = "auto") -> tuple[str, str, list[Path]]:
    """``(layout, split, files)`` of the input ``spec`` (a file, folder or glob).

    Parquet is told apart by its columns (the first file's): ``votes_image1``/``votes_image2`` ->
    votes, image columns ``chosen``/``rejected`` -> chosen-rejected, otherwise pickapic (whose own
    column checks name what is missing). ``.json``/``.jsonl`` -> hpdv3, ``.tar`` -> webdataset.

    Raises:
        UserError: one line: the input does not exist, holds no file of any layout, files of several
            kinds, Parquet that fits several layouts, or not what a forced ``input_format`` reads.
    """
    name, found = _find(spec, split)
    if input_format != "auto":
        kind = KIND_OF[input_format]
        if kind not in found:
            raise UserError(f"--input-format {input_format} reads {LAYOUT_NEEDS[input_format]}; '{spec}' holds none "
                            f"({_found_text(found)}).")
        return input_format, name, found[kind]
    if len(found) > 1 and "json" in found and not any(map(_looks_hpdv3, found["json"])):
        del found["json"]  # e.g. a config.json beside Parquet shards: not records, not a second layout
    if not found:
        raise UserError(f"No Parquet files in '{spec}', nor JSON or tar files (a folder is searched as "
                        f"datasets.load_dataset searches it). Each layout needs: {_needs_text()}.")
    if len(found) > 1:
        raise UserError(f"'{spec}' is ambiguous: it holds {_found_text(found)}; pass --input-format with one of "
                        f"{', '.join(LAYOUTS)} ({_needs_text()}).")
    kind, files = next(iter(found.items()))
    if kind == "json":
        return "hpdv3", name, files
    if kind == "tar":
        return "webdataset", name, files
    matches = _parquet_layouts(files[0])
    if len(matches) > 1:
        raise UserError(f"{files[0]} fits several layouts ({', '.join(matches)}); pass --input-format with one of "
                        f"them ({'; '.join(f'{m}: {LAYOUT_NEEDS[m]}' for m in matches)}).")
    return (matches[0] if matches else "pickapic"), name, files


def _looks_hpdv3(path: Path) -> bool:
    """Whether a JSON file's first record has HPDv3's fields (False for any JSON that is not records)."""
    from .json_records import JsonRecords

    try:
        first = next((rec for _, rec in JsonRecords(path).read(limit=1)), None)
    except UserError:
        return False
    return isinstance(first, dict) and all(k in first for k in hpdv3.NEEDS)


def _found_text(found: dict) -> str:
    if not found:
        return "no Parquet, JSON or tar file"
    return " and ".join(f"{len(files)} {kind} file(s)" for kind, files in found.items())


def _parquet_layouts(path: Path) -> list[str]:
    """The Parquet layouts whose columns ``path`` has."""
    from pipeline.data.images import is_image_column

    schema = ParquetShard(path).schema_arrow
    names = set(schema.names)
    out = []
    if {"caption", "jpg_0", "jpg_1"} <= names or {"caption", "jpg"} <= names:
        out.append("pickapic")
    if set(votes.NEEDS) <= names:
        out.append("votes")
    if ({"chosen", "rejected"} <= names and chosen_rejected.prompt_column(names)
            and all(is_image_column(schema.field(c).type) for c in ("chosen", "rejected"))):
        out.append("chosen-rejected")
    return out


def _check_parquet(layout: str, files: list[Path]) -> None:
    """A forced or detected non-Pick-a-Pic Parquet layout: each file has its columns (one line if not)."""
    for f in files:
        names = ParquetShard(f).schema_arrow.names
        needs = votes.NEEDS if layout == "votes" else ("chosen", "rejected")
        missing = [c for c in needs if c not in names]
        if layout == "chosen-rejected" and not chosen_rejected.prompt_column(names):
            missing.insert(0, "prompt")
        if missing:
            raise UserError(f"{f} lacks column(s) {', '.join(missing)}: the {layout} layout needs "
                            f"{LAYOUT_NEEDS[layout]} (found {', '.join(names[:12])}).")


def open_pairs(spec, split: str = SPLIT, options: LayoutOptions | None = None) -> PairInput:
    """The input ``spec`` as shards of Pick-a-Pic-shaped rows (see the module docstring).

    ``options``: ``--input-format``, ``--image-root``, ``--min-vote-margin``, ``--records-per-shard``.
    Pick-a-Pic Parquet gives one :class:`ParquetShard` per file, read exactly as before; the other
    layouts map rows batch by batch (``votes``, ``chosen-rejected``), read a JSON file in pieces of
    ``records_per_shard`` records (``hpdv3``) or stream a tar per shard (``webdataset``).

    Raises:
        UserError: see :func:`detect_layout`; a file of the layout that lacks its columns or is not
            readable; a JSON that is not a list of records; a vote column that is not a number;
            an input with no record.
    """
    opts = options or LayoutOptions()
    layout, name, files = detect_layout(spec, split, opts.input_format)
    settings: dict = {}
    if layout == "pickapic":
        shards: list = [ParquetShard(f) for f in files]
        rule = PICKAPIC_RULE
    elif layout == "votes":
        _check_parquet(layout, files)
        settings = {"min_vote_margin": opts.min_vote_margin}
        shards, rule = [votes.shard(f, opts.min_vote_margin) for f in files], votes.rule(opts.min_vote_margin)
    elif layout == "chosen-rejected":
        _check_parquet(layout, files)
        shards, rule = [chosen_rejected.shard(f) for f in files], chosen_rejected.RULE
    elif layout == "hpdv3":
        settings = {"records_per_shard": opts.records_per_shard}
        if opts.image_root:
            settings["image_root"] = str(Path(opts.image_root).expanduser().resolve())
        shards = hpdv3.open_shards(files, opts.records_per_shard, opts.image_root, {"layout": layout, **settings})
        rule = hpdv3.RULE
        if not shards:
            raise UserError(f"No HPDv3 record in '{spec}' ({', '.join(f.name for f in files)} hold an empty list).")
    else:
        shards, rule = [webdataset.TarShard(f) for f in files], webdataset.RULE
    return PairInput(layout, name, shards, list(files), rule, settings)

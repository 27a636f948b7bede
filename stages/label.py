"""``mapo-data label``: image pairs -> Pick-Style / Pick-Safety / reward-labelled preference shards.

Input shard k (a ``generate`` output, or any Parquet with the Pick-a-Pic columns) becomes
output shard k: ``data/`` holds the kept pairs with ``label_0``/``label_1`` (int64, 1/0, never
a tie), the labeler's scores, name, version and reason, and every input column carried over;
``rejects/`` holds the dropped pairs with their reason. Image bytes are copied unchanged (a
``datasets`` Image struct input, ``{bytes, path}``, is written as its plain bytes). The
shards carry ``datasets`` features and the folder gets a dataset card (README.md) whose
``configs`` point at ``data/`` only, so ``load_dataset(output)`` reads it offline and ignores
``rejects/``. ``--target reward`` (:mod:`stages.reward_label`) also reads rows of K candidates
(``generate --images-per-prompt K``) and may write several pairs per input row.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.cli.options import (
    PANEL_IO,
    check_options,
    device_option,
    option,
    options_record,
    overwrite_option,
    split_option,
)
from pipeline.data.images import ImageDecodeError, decode_image, image_column_bytes, is_image_column
from pipeline.data.layouts import LayoutOptions, as_shard, open_pairs
from pipeline.data.shards import SPLIT, ShardedOutput, check_output_apart, input_kind, read_manifest
from pipeline.errors import UserError
from pipeline.judges.scores import is_finite_score
from pipeline.runtime.distributed import accelerator_device, current_process
from pipeline.runtime.stage_runner import ShardedStage, run_sharded

from .labelers import CORRUPT_IMAGE, Decision, LabelerSpec, Pair, build_labeler

STAGE = "label"
REQUIRED = ("caption", "jpg_0", "jpg_1")
# Columns the labeler writes; an input that already has them is renamed input_<name>.
LABEL_COLUMNS = ("label_0", "label_1", "score_0", "score_1", "labeler", "labeler_version", "reason", "disagrees")
FRONT = ("caption", "jpg_0", "jpg_1", *LABEL_COLUMNS, "pair_id")


@dataclass
class LabelConfig:
    """``mapo-data label``: every option, declared once (:mod:`pipeline.cli.options`)."""

    input: str = option(panel=PANEL_IO, help=(
        "Pairs: a generate output folder, or Pick-a-Pic Parquet (file or folder with caption, jpg_0, jpg_1)."))
    output: str = option(panel=PANEL_IO, help=(
        "Output folder for the preference shards, rejects and dataset card (resumable)."))
    labeler: LabelerSpec = field(default_factory=LabelerSpec)
    device: str = device_option()
    license: str = option("other", panel=PANEL_IO, help="License written into the dataset card.")
    overwrite: bool = overwrite_option()
    split: str = split_option()
    layout: LayoutOptions = field(default_factory=LayoutOptions)

    def validate(self) -> "LabelConfig":
        """The declared checks and the labeler's (see :meth:`LabelerSpec.resolved_labeler`)."""
        check_options(self)
        self.labeler.resolved_labeler()
        return self


@dataclass
class LabelResult:
    output: str
    pairs_in: int
    kept: int
    rejected: int
    disagreements: int
    shards_written: int
    shards_skipped: int
    seconds: float  # the whole call, model loading included
    loop_seconds: float  # decoding, labeling and writing
    rows_in: int = 0  # input rows: pairs, or one prompt's candidates each
    candidates: int = 2  # candidates per input row (generate --images-per-prompt K)

    @property
    def pairs_per_second(self) -> float:
        return self.pairs_in / self.loop_seconds if self.loop_seconds else 0.0

    def summary(self) -> str:
        """The CLI's line: what came in (pairs, or prompts of K candidates and the pairs formed from them),
        kept, rejected, disagreements, time."""
        from pipeline.cli.formatting import count

        if self.candidates == 2:
            what, rate = count(self.pairs_in, "pair"), f"{self.pairs_per_second:.2f} pairs/s"
        else:
            rows = self.rows_in or self.pairs_in
            what = (f"{count(rows, 'prompt')} x {self.candidates} candidates "
                    f"({count(self.pairs_in, 'candidate pair')} formed)")
            rate = f"{rows / self.loop_seconds if self.loop_seconds else 0.0:.2f} prompts/s"
        return (f"label: {what} in {count(self.shards_written, 'shard')} ({self.shards_skipped} already done): "
                f"{self.kept} kept, {self.rejected} rejected, {self.disagreements} disagreed with the input's label "
                f"or recipe -> {self.output} | {self.seconds:.1f}s total, {rate}")


# ---------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------


@dataclass
class LabelInput:
    kind: str  # "generate" (ours), "pickapic" or another layout of pipeline.data.layouts
    files: list[Path]  # the input shards (pipeline.data.layouts.InputShard: path-like, read like a ParquetFile)
    manifest: dict | None
    split: str = SPLIT  # the split the files belong to; the output shards are named after it
    layout: dict | None = None  # another layout's name, settings and label rule (pipeline.data.layouts), for the card

    def fingerprint(self) -> str:
        parts = [str((self.manifest or {}).get("fingerprint"))] + [f"{f.name}:{f.stat().st_size}" for f in self.files]
        if self.layout:
            parts.append(json.dumps(self.layout, sort_keys=True))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def open_input(path: str, split: str = SPLIT, layout: LayoutOptions | None = None) -> LabelInput:
    """Find the input shards (``split``'s, where the folder holds several) and check they are pairs
    we can label, or fail in one line (UserError). Splits and layouts follow ``pipeline.data.layouts.open_pairs``."""
    root, kind = Path(path), input_kind(path, "--input")
    manifest = read_manifest(root) if kind == "folder" else None
    if manifest is not None:
        if manifest.get("stage") != "generate":
            raise UserError(
                f"{path} is a mapo-data {manifest.get('stage')} output, not pairs; label the generate output it came "
                "from."
            )
        if manifest.get("status") != "complete":
            done, n = len(manifest.get("completed_shards", [])), manifest.get("num_shards")
            raise UserError(
                f"{path} is an unfinished generate output ({done} of {n} shards); rerun generate to finish it first."
            )
    if kind == "file" and not root.name.endswith((".parquet", ".json", ".jsonl", ".tar", ".tar.gz", ".tgz")):
        raise UserError(f"--input {path} is neither a folder of Parquet shards nor a .parquet file (nor an "
                        "HPDv3 .json/.jsonl or a WebDataset .tar).")
    pairs = open_pairs(root, split, layout)
    split, files = pairs.split, pairs.shards
    for f in files:
        schema = f.schema_arrow
        missing = [c for c in REQUIRED if c not in schema.names]
        images = [c for c in schema.names if c == "jpg_0" or c == "jpg_1" or (c.startswith("jpg_") and c[4:].isdigit())]
        wrong = [c for c in images if not is_image_column(schema.field(c).type)]
        if missing or wrong:
            what = f"lacks column(s) {', '.join(missing)}" if missing else f"has non-binary {', '.join(wrong)}"
            raise UserError(
                f"{f} is neither a mapo-data generate output nor Pick-a-Pic Parquet: it {what} "
                f"(needs caption, jpg_0, jpg_1 as encoded image bytes or datasets Image structs; "
                f"found {', '.join(schema.names[:12])})."
            )
    kind = "generate" if manifest is not None else pairs.layout
    return LabelInput(kind, files, manifest, split, pairs.describe() if kind not in ("generate", "pickapic") else None)


# Generation recipes each target can label: style pairs by their style prompt; safety judges
# safety pairs, or two-seed pairs, by a classifier; reward models judge any images.
_RECIPES_FOR_TARGET = {"style": ("style",), "safety": ("safety", "seeds"), "reward": ("style", "safety", "seeds")}


def _check_recipe_fits_target(source: LabelInput, target: str) -> None:
    identity = (source.manifest or {}).get("identity", {})
    candidates = identity.get("images_per_prompt", 2)
    if candidates != 2 and target != "reward":
        raise UserError(f"--target {target} labels pairs; this input has {candidates} candidates per prompt "
                        "(generate --images-per-prompt): label it with --target reward.")
    recipe = identity.get("recipe")
    if recipe is not None and recipe not in _RECIPES_FOR_TARGET.get(target, (recipe,)):
        raise UserError(
            f"--target {target} cannot label pairs made with --recipe {recipe} "
            f"(it labels {' or '.join(_RECIPES_FOR_TARGET[target])} pairs); generate pairs with a matching recipe."
        )


def _with_style_text(spec, source: LabelInput):
    """--verify clip needs a style text: a built-in style has one; a custom style prefix serves as
    its own; otherwise --style-text is required. Checked before any model loads or file is written."""
    from dataclasses import replace

    from pipeline.data.prompt_prefixes import STYLE_TEXTS

    if spec.verify == "world-style":
        from pipeline.judges import get_judge

        WORLD_STYLES = get_judge("world-style").styles  # the world's looks, declared by its judge plugin
        style = (source.manifest or {}).get("identity", {}).get("style")
        if style not in WORLD_STYLES:
            raise UserError("--verify world-style checks pairs made by generate --recipe style --style "
                            f"{'|'.join(s for s in WORLD_STYLES if s != 'realistic')} on the miniature world; this "
                            f"input's style is {style!r}.")
        return spec
    if spec.verify != "clip" or spec.style_text is not None:
        return spec
    identity = (source.manifest or {}).get("identity", {})
    if identity.get("style") in STYLE_TEXTS:
        return spec
    if identity.get("style_prefix"):
        return replace(spec, style_text=identity["style_prefix"])
    raise UserError("--verify clip needs --style-text here: the input has no built-in style "
                    f"({', '.join(STYLE_TEXTS)}) to take the zero-shot texts from.")


def _labels_choice(row: dict) -> int | None:
    """The image the input's own ``label_0``/``label_1`` chose (Pick-a-Pic's floats or a label output's ints);
    None without labels, on a tie, or when either label is not finite (None, NaN, +-inf never decides)."""
    l0, l1 = row.get("label_0"), row.get("label_1")
    if not (is_finite_score(l0) and is_finite_score(l1)) or l0 == l1:
        return None
    return 0 if l0 > l1 else 1


def _intended(row: dict) -> int | None:
    """The image the recipe meant to be chosen (what construction labels by), else the input's own labels."""
    if "intended_chosen" in row:
        return row["intended_chosen"]
    return _labels_choice(row)


def _input_choice(row: dict) -> int | None:
    """What ``disagrees`` compares with: the input's labels when it has them (a relabelled label output's
    ``label_0``/``label_1`` may overrule its recipe's ``intended_chosen``), else the recipe's intended image."""
    labels = _labels_choice(row)
    return labels if labels is not None else row.get("intended_chosen")


def _pair_id(caption: str, b0: bytes | None, b1: bytes | None) -> str:
    """Content id for inputs without one: the same pair gets the same id on every run."""
    h = hashlib.sha256((caption or "").encode())
    h.update(b"\0" + (b0 or b"") + b"\0" + (b1 or b""))
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# One batch of rows
# ---------------------------------------------------------------------------------------------


def _decode_pair(row: dict, base_dir: Path | None = None) -> tuple[tuple | None, str | None]:
    images = []
    for i in (0, 1):
        try:
            images.append(decode_image(row[f"jpg_{i}"], base_dir=base_dir))
        except ImageDecodeError as exc:
            return None, f"image {i}: {exc}"
    return tuple(images), None


def label_rows(table, labeler, base_dir: Path | None = None) -> tuple[list[Decision], list[str | None]]:
    """Decisions for every row of ``table`` (corrupt rows rejected before the labeler), plus details.

    ``base_dir``: the folder of the input file, where image structs' relative paths are read."""
    rows = table.select([c for c in ("caption", "jpg_0", "jpg_1", "intended_chosen", "label_0", "label_1", "style")
                         if c in table.column_names]).to_pylist()
    decisions: list[Decision | None] = [None] * len(rows)
    details: list[str | None] = [None] * len(rows)
    pairs, where = [], []
    # PIL decodes outside the GIL: threads overlap the decoding of a batch's images.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(_decode_pair, rows, [base_dir] * len(rows)))
    for i, (row, (images, problem)) in enumerate(zip(rows, decoded)):
        if problem:
            decisions[i], details[i] = Decision(None, CORRUPT_IMAGE), problem
        else:
            pairs.append(Pair(images, _intended(row), row.get("style"), _input_choice(row)))
            where.append(i)
    for i, d in zip(where, labeler.label(pairs)):
        decisions[i] = d
    return decisions, details  # type: ignore[return-value]


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
        ids = [_pair_id(c, a, b) for c, a, b in zip(*(table[k].to_pylist() for k in REQUIRED))]
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


def _shard_stats(kept, rejected, seconds: float) -> dict:
    import pyarrow.compute as pc

    reasons: dict[str, int] = {}
    for r in rejected["reason"].to_pylist():
        reasons[r] = reasons.get(r, 0) + 1
    return {
        "pairs_in": kept.num_rows + rejected.num_rows,
        "kept": kept.num_rows,
        "rejected": rejected.num_rows,
        "chosen_0": int(pc.sum(kept["label_0"]).as_py() or 0),
        "chosen_1": int(pc.sum(kept["label_1"]).as_py() or 0),
        "disagreements": int(pc.sum(kept["disagrees"].cast("int64")).as_py() or 0),
        "drop_reasons": reasons,
        "seconds": seconds,
    }


def label_batch(batch, labeler, base_dir: Path | None = None):
    """One batch of input rows -> ``(kept, rejected)`` tables: a pair labeler decides row by row
    (:func:`label_rows`, :func:`annotate`); a labeler with ``label_table`` (reward) makes the tables itself."""
    if hasattr(labeler, "label_table"):
        return labeler.label_table(batch, base_dir)
    decisions, details = label_rows(batch, labeler, base_dir)
    return annotate(batch, decisions, details, labeler, base_dir)


def label_shard(out: ShardedOutput, k: int, path: Path, labeler, batch_size: int, bar=None) -> dict:
    """Label one input file into output shard k, written atomically; returns its stats."""
    import pyarrow as pa

    from pipeline.data.hf_features import with_hf_features

    t0 = time.perf_counter()
    pf = as_shard(path)  # any input layout (pipeline.data.layouts), read like a ParquetFile
    kept_parts, rejected_parts = [], []
    rows_in = 0
    batches = (pa.Table.from_batches([b]) for b in pf.iter_batches(batch_size=batch_size))
    for batch in batches:
        kept, rejected = label_batch(batch, labeler, path.parent)
        kept_parts.append(kept)
        rejected_parts.append(rejected)
        rows_in += batch.num_rows
        if bar is not None:
            bar.update(batch.num_rows)
    if not kept_parts:  # an empty input file still gives a (typed, empty) shard
        kept, rejected = label_batch(pf.schema_arrow.empty_table(), labeler)
        kept_parts, rejected_parts = [kept], [rejected]
    kept = with_hf_features(pa.concat_tables(kept_parts).combine_chunks())
    rejected = with_hf_features(pa.concat_tables(rejected_parts).combine_chunks())
    stats = _shard_stats(kept, rejected, time.perf_counter() - t0)
    if hasattr(labeler, "shard_stats"):
        stats.update(labeler.shard_stats(kept, rejected, rows_in))
    # Image bytes are already compressed: the data file is stored uncompressed, as generate does.
    out.write_shard(k, {"data": kept, "rejects": rejected}, stats, compression="none")
    return stats


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def _warn_if_nothing_kept(totals: dict, root: Path) -> None:
    """A run that keeps no pair is not an error (the input may be all ties) but never silent."""
    import sys

    if totals.get("pairs_in") and not totals.get("kept"):
        reasons = sorted(totals.get("drop_reasons", {}).items(), key=lambda kv: -kv[1])
        why = ", ".join(f"{n} {reason}" for reason, n in reasons) or "no reason recorded"
        print(f"warning: label kept 0 of {totals['pairs_in']} pairs ({why}); the dropped pairs are in {root}/rejects/, "
              f"`mapo-data inspect {root}` summarises them", file=sys.stderr)


def _probe(labeler, source: LabelInput, rows: int = 4) -> None:
    """Label the input's first ``rows`` rows and throw the result away, so that a classifier or style check
    that cannot read this input (the world's judges on images that are not 64x64, ...) refuses before the
    output folder exists: nothing half-written. The reward labeler checks itself by calibrating.

    Raises:
        UserError: whatever the labeler raises on those rows.
    """
    import pyarrow as pa

    if hasattr(labeler, "label_table") or not source.files:
        return
    first = next(as_shard(source.files[0]).iter_batches(batch_size=rows), None)  # any input layout
    if first is not None and first.num_rows:
        label_rows(pa.Table.from_batches([first]), labeler, source.files[0].parent)


def _finished_output(cfg: LabelConfig, source, spec: dict) -> ShardedOutput | None:
    """The finished output of this very configuration, decided before the labeler loads (its classifier or
    judges are slow to load), else None.

    The full identity holds ``labeler.describe()``, known only once the labeler is built; a finished run's
    manifest also stores the labeler's options as given (``labeler_spec``). Equal options, the known identity
    keys already checked (:meth:`ShardedOutput.check` with ``partial``), and every shard complete: the folder's
    own identity is this run's, as generate and precompute decide from their manifests. As there, a labeler
    whose weights changed behind the same options is not looked at on a finished rerun (``--overwrite`` redoes it).
    """
    manifest = read_manifest(cfg.output)
    if cfg.overwrite or manifest is None or manifest.get("labeler_spec") != spec:
        return None
    out = ShardedOutput(cfg.output, STAGE, manifest.get("identity", {}), len(source.files), manifest.get("config"),
                        split=source.split)
    return out if out.finished() else None


def run_label(cfg: LabelConfig) -> LabelResult:
    """Label all pending shards of ``cfg.output`` that belong to this process."""
    from pipeline.models.loading import resolve_device

    from .card import write_card

    record = options_record(cfg)  # as given, before the input's style text is filled in
    cfg.validate()
    t_start = time.perf_counter()
    proc = current_process()
    source = open_input(cfg.input, cfg.split, cfg.layout)
    _check_recipe_fits_target(source, cfg.labeler.target)
    cfg.labeler = _with_style_text(cfg.labeler, source)
    check_output_apart(cfg.output, [Path(f) for f in source.files])
    device = resolve_device(accelerator_device(cfg.device))
    known = {"input_fingerprint": source.fingerprint(), "input_kind": source.kind, "target": cfg.labeler.target,
             "batch_size": cfg.labeler.batch_size}
    # Before the labeler loads its classifier or judges (slow): a folder made from another input, target or
    # batch size, or not a mapo-data output, is refused now. The labeler's own description joins below.
    ShardedOutput(cfg.output, STAGE, known, len(source.files), split=source.split).check(cfg.overwrite, partial=True)
    spec = json.loads(json.dumps(asdict(cfg.labeler)))  # as the manifest stores it
    out = _finished_output(cfg, source, spec)
    labeler = None
    if out is None:  # work to do (or a folder from before labeler_spec was recorded): load the labeler
        labeler = build_labeler(cfg.labeler, device=str(device), source=source)
        _probe(labeler, source)
        identity = {**known, **labeler.describe()}
        config = {**asdict(cfg), **record, "input_kind": source.kind, "input_files": [f.name for f in source.files],
                  "labeler_resolved": labeler.describe(), "device": str(device)}
        # A test split's pairs are written as test-*, never as train data.
        out = ShardedOutput(cfg.output, STAGE, identity, len(source.files), config, split=source.split)

    def count_pairs(todo: list[int]) -> int:
        return sum(as_shard(source.files[k]).metadata.num_rows for k in todo)

    run = run_sharded(ShardedStage(
        STAGE, out, lambda k, pool, bar: label_shard(out, k, source.files[k], labeler, cfg.labeler.batch_size, bar),
        count_pairs, overwrite=cfg.overwrite,
        manifest_extra=lambda: {"input": {"path": str(cfg.input), "kind": source.kind}, "labeler_spec": spec}), proc)
    if proc.is_main:
        if labeler is not None:  # a finished rerun keeps the card its run wrote
            write_card(cfg, out.root, source, labeler, run.summed, out.num_shards, split=out.split)
        _warn_if_nothing_kept(run.summed, out.root)
    t = run.totals
    from .reward_label import candidate_count

    # The shared reader's schema: an input in another layout (HPDv3 JSON, a tar) is no Parquet file to read here.
    k = candidate_count(as_shard(source.files[0]).schema_arrow.names) if source.files else 2
    return LabelResult(cfg.output, t.get("pairs_in", 0), t.get("kept", 0), t.get("rejected", 0),
                       t.get("disagreements", 0),
                       len(run.todo), run.skipped, time.perf_counter() - t_start, run.loop_seconds,
                       t.get("rows_in", t.get("pairs_in", 0)), k)

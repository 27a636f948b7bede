"""``mapo-data label``: image pairs -> Pick-Style / Pick-Safety / reward-labelled preference shards.

Input shard k (a ``generate`` output, or any Parquet with the Pick-a-Pic columns) becomes
output shard k: ``data/`` holds the kept pairs with ``label_0``/``label_1`` (int64, 1/0, never
a tie), the labeler's scores, name, version and reason, and every input column carried over;
``rejects/`` holds the dropped pairs with their reason. Image bytes are copied unchanged (a
``datasets`` Image struct input, ``{bytes, path}``, is written as its plain bytes). The
shards carry ``datasets`` features and the folder gets a dataset card (README.md) whose
``configs`` point at ``data/`` only, so ``load_dataset(output)`` reads it offline and ignores
``rejects/``. ``--target reward`` (:mod:`stages.label.reward`) also reads rows of K candidates
(``generate --images-per-prompt K``) and may write several pairs per input row.
"""
from __future__ import annotations

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
from pipeline.data.images import ImageDecodeError, decode_image
from pipeline.data.layouts import LayoutOptions, as_shard
from pipeline.data.shards import ShardedOutput, check_output_apart, read_manifest
from pipeline.runtime.distributed import accelerator_device, current_process
from pipeline.runtime.stage_runner import ShardedStage, run_sharded

from .inputs import LabelInput, check_recipe_fits_target, open_input, with_style_text
from .registry import build_labeler
from .schema import CORRUPT_IMAGE, Decision, Pair, annotate, candidate_count, input_choice, intended_choice
from .spec import LabelerSpec

STAGE = "label"


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
            pairs.append(Pair(images, intended_choice(row), row.get("style"), input_choice(row)))
            where.append(i)
    for i, d in zip(where, labeler.label(pairs)):
        decisions[i] = d
    return decisions, details  # type: ignore[return-value]


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

    from ..card import write_card

    record = options_record(cfg)  # as given, before the input's style text is filled in
    cfg.validate()
    t_start = time.perf_counter()
    proc = current_process()
    source = open_input(cfg.input, cfg.split, cfg.layout)
    check_recipe_fits_target(source, cfg.labeler.target)
    cfg.labeler = with_style_text(cfg.labeler, source)
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
    # The shared reader's schema: an input in another layout (HPDv3 JSON, a tar) is no Parquet file to read here.
    k = candidate_count(as_shard(source.files[0]).schema_arrow.names) if source.files else 2
    return LabelResult(cfg.output, t.get("pairs_in", 0), t.get("kept", 0), t.get("rejected", 0),
                       t.get("disagreements", 0),
                       len(run.todo), run.skipped, time.perf_counter() - t_start, run.loop_seconds,
                       t.get("rows_in", t.get("pairs_in", 0)), k)

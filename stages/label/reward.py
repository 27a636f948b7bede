"""``mapo-data label --target reward``: reward models judge every candidate, a rule forms the pairs.

An input row holds one prompt's candidates: ``jpg_0``, ``jpg_1`` (a pair: Pick-a-Pic, any
``generate`` recipe) or ``jpg_0`` ... ``jpg_{K-1}`` (``generate --recipe seeds --images-per-prompt K``).
Every candidate is scored by each judge of ``--reward`` (the registered judges of
:mod:`pipeline.judges`: ``pickscore``, ``hps``, ``aesthetic``, ``clip``, the world's judges ...)
against the row's caption; the scores are standardised with each judge's mean and std over the
input's first ``--calibration-rows`` rows (the same rows for every process, so any process count
writes the same shards) and summed with the weights (:func:`pipeline.judges.reward.combine`); the rule
(:func:`pipeline.judges.reward.pair_candidates`) forms the pairs. A row may thus give 0, 1 or several
output pairs, each in the Pick-a-Pic layout of the other targets: the two candidates in their
original order as ``jpg_0``/``jpg_1`` (with their per-candidate columns, e.g. ``seed_0``/``seed_1``),
``label_0``/``label_1``, the rewards in ``score_0``/``score_1``, and ``rule``, ``reward_gap``,
``candidate_0``/``candidate_1``, ``num_candidates``, ``judge_scores_0``/``judge_scores_1`` (each
judge's raw score, JSON). Ties, near ties, undecodable candidates and candidates a judge scored with NaN
or inf (:data:`pipeline.judges.scores.NON_FINITE`) go to ``rejects/`` with their reason.
On a pair input a row whose original label (``label_0``/``label_1`` or the recipe's intended
image) the judges reverse has ``disagrees = true``.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

from pipeline.data.images import ImageDecodeError, decode_image, image_column_bytes
from pipeline.errors import UserError
from pipeline.judges.reward import (
    NEAR_TIE,
    TIE,
    Scale,
    combine,
    fit_scales,
    gap_bins,
    gap_histogram,
    pair_candidates,
    reward_text,
)
from pipeline.judges.scores import NON_FINITE, is_finite_score

from .schema import (
    CORRUPT_IMAGE,
    FRONT,
    LABEL_COLUMNS,
    candidate_count,
    content_pair_id,
    input_choice,
    per_candidate_bases,
)

# Columns the reward target writes beside LABEL_COLUMNS; an input holding one is renamed input_<name>.
REWARD_COLUMNS = (
    "rule", "reward_gap", "candidate_0", "candidate_1", "num_candidates", "judge_scores_0", "judge_scores_1"
)
def _decode_all(cells: list, base_dir: Path | None) -> list:
    """Decode image cells in threads (PIL decodes outside the GIL); each result an image or an ImageDecodeError."""
    def one(cell):
        try:
            return decode_image(cell, base_dir=base_dir)
        except ImageDecodeError as exc:
            return exc

    if not cells:
        return []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(one, cells))


class RewardLabeler:
    """Scores candidates with ``judges`` (name -> :class:`pipeline.judges.Judge`), combines them with ``weights``
    and pairs them by ``rule``.

    ``scales`` (one :class:`~pipeline.judges.reward.Scale` per judge) must be set, by :meth:`calibrate`, before
    :meth:`label_table`. ``versions``: each judge's :func:`pipeline.judges.loading.judge_version`.
    """

    def __init__(self, judges: Mapping, weights: Mapping[str, float], rule: str, min_gap: float,
                 versions: Mapping[str, str], calibration_rows: int = 256):
        self.judges, self.weights, self.rule, self.min_gap = dict(judges), dict(weights), rule, float(min_gap)
        self.versions, self.calibration_rows = dict(versions), calibration_rows
        self.higher_is_better = {n: bool(self.judges[n].higher_is_better) for n in self.weights}
        self.name = "reward:" + reward_text(self.weights)
        self.version = "; ".join(f"{n}={self.versions[n]}" for n in self.weights)
        self.rule_text = f"{rule}, gap > {self.min_gap:g}"
        self.scales: dict[str, Scale] | None = None

    # -- scores --------------------------------------------------------------------------------
    def raw_scores(self, images: Sequence, prompts: Sequence[str]) -> dict[str, list[float]]:
        """Each judge's score of each image against its prompt: ``{judge: [score per image]}``."""
        if not images:
            return {n: [] for n in self.weights}
        return {n: [float(v) for v in self.judges[n].score(list(images), list(prompts))] for n in self.weights}

    def rewards(self, raw: Mapping[str, Sequence[float]]) -> list[float]:
        """Standardised, weighted, summed rewards (:func:`pipeline.judges.reward.combine`); needs :attr:`scales`."""
        if self.scales is None:
            raise RuntimeError("RewardLabeler.calibrate must run before rewards")
        return combine(raw, self.weights, self.scales, self.higher_is_better)

    def calibrate(self, files: Sequence[Path], read_batch: int = 64) -> dict[str, Scale]:
        """Fit each judge's scale on the candidates of the first :attr:`calibration_rows` rows of ``files``
        (in order; undecodable candidates left out). No candidate at all: mean 0, std 1."""
        from pipeline.data.layouts import as_shard

        images, prompts, left = [], [], self.calibration_rows
        for f in files:
            pf = as_shard(f)  # any input layout (pipeline.data.layouts), read like a ParquetFile
            k = candidate_count(pf.schema_arrow.names)
            for batch in pf.iter_batches(
                batch_size=min(read_batch, left), columns=["caption"] + [f"jpg_{i}" for i in range(k)]
            ):
                rows = batch.to_pylist()[:left]
                decoded = _decode_all([r[f"jpg_{i}"] for r in rows for i in range(k)], Path(f).parent)
                for n, im in enumerate(decoded):
                    if not isinstance(im, Exception):
                        images.append(im)
                        prompts.append(rows[n // k]["caption"] or "")
                left -= len(rows)
                if left <= 0:
                    break
            if left <= 0:
                break
        raw = self.raw_scores(images, prompts)
        self.scales = fit_scales(raw) if images else {n: Scale(0.0, 1.0, 0) for n in self.weights}
        return self.scales

    # -- one batch of input rows -> (kept, rejected) pair tables ---------------------------------
    def label_table(self, batch, base_dir: Path | None = None):
        """Pairs from a batch of input rows: ``(kept, rejected)`` Arrow tables in the label layout.

        Pairs come row by row, in :func:`pipeline.judges.reward.pair_candidates`' order; a row with undecodable
        candidates, or candidates a judge scored NaN or inf, gives one reject (``corrupt image`` when any
        is undecodable, else ``non-finite judge score``: its first bad candidate beside another, every bad
        one named in ``detail``) and is paired among the rest.
        """
        import pyarrow as pa

        k = candidate_count(batch.column_names)
        # Decoded from the cells as stored, so an image struct's unreadable file is named in the reject's detail.
        decoded = _decode_all([
            cell for r in batch.select([f"jpg_{i}" for i in range(k)]).to_pylist() for cell in r.values()
        ],
                              base_dir)
        for i in range(k):  # image structs -> plain bytes (Pick-a-Pic's and the MaPO loaders' layout)
            c = f"jpg_{i}"
            batch = batch.set_column(batch.column_names.index(c), c, image_column_bytes(batch[c], base_dir))
        captions = batch["caption"].to_pylist()
        cells = [batch[f"jpg_{i}"].to_pylist() for i in range(k)]
        good = [
            (r, i) for r in range(batch.num_rows) for i in range(k) if not isinstance(decoded[r * k + i], Exception)
        ]
        raw = self.raw_scores([decoded[r * k + i] for r, i in good], [captions[r] or "" for r, _ in good])
        rewards = self.rewards(raw) if good else []
        reward_of = {ri: rewards[n] for n, ri in enumerate(good)}
        raw_of = {ri: {j: raw[j][n] if is_finite_score(raw[j][n]) else None for j in self.weights}
                  for n, ri in enumerate(good)}
        intended_rows = batch.select(
            [c for c in ("intended_chosen", "label_0", "label_1") if c in batch.column_names]
        ).to_pylist()

        entries = []  # (row, a, b, chosen a/b or None, reason, detail, gap)
        for r in range(batch.num_rows):
            corrupt = [i for i in range(k) if isinstance(decoded[r * k + i], Exception)]
            unscored = [i for i in range(k) if i not in corrupt and reward_of.get((r, i)) is None]
            bad = sorted(corrupt + unscored)
            if bad:
                other = next(i for i in range(k) if i != bad[0])
                detail = "; ".join(
                    f"image {i}: {decoded[r * k + i]}" if i in corrupt else
                    f"image {i}: " + ", ".join(f"{j} score not finite" for j, v in raw_of[(r, i)].items() if v is None)
                    for i in bad
                )
                reason = CORRUPT_IMAGE if corrupt else NON_FINITE
                entries.append((r, *sorted((bad[0], other)), None, reason, detail, None))
            for p in pair_candidates([reward_of.get((r, i)) for i in range(k)], self.rule, self.min_gap):
                detail = None if p.kept else f"gap {p.gap:.4g}, kept above {self.min_gap:g}"
                entries.append(
                    (r, p.first, p.second, p.chosen if p.kept else None, p.reason or "higher reward", detail, p.gap)
                )

        columns = batch.column_names
        bases = per_candidate_bases(columns, k)
        per_candidate = {f"{b}_{i}" for b in bases for i in range(k)}
        rows = [e[0] for e in entries]
        table = batch.select([c for c in columns if c not in per_candidate]).take(pa.array(rows, pa.int64()))
        for b in bases:  # candidate a -> <b>_0, candidate b -> <b>_1, typed as the input's <b>_0
            values = [batch[f"{b}_{i}"].to_pylist() for i in range(k)]
            kind = batch.schema.field(f"{b}_0").type
            for pos in (0, 1):
                table = table.append_column(pa.field(f"{b}_{pos}", kind),
                                            pa.array([values[e[1 + pos]][e[0]] for e in entries], kind))
        for name in LABEL_COLUMNS + REWARD_COLUMNS + ("detail",):
            if name in table.column_names:  # e.g. Pick-a-Pic's float labels: kept as input_label_0/1
                table = table.rename_columns([f"input_{c}" if c == name else c for c in table.column_names])
        if "pair_id" in table.column_names:
            row_ids = table["pair_id"].to_pylist()
            table = table.drop_columns(["pair_id"])
        else:
            row_ids = [content_pair_id(captions[e[0]], cells[0][e[0]], cells[1][e[0]]) for e in entries]
        pair_ids = [rid if k == 2 else f"{rid}-{e[1]}v{e[2]}" for rid, e in zip(row_ids, entries)]

        def reward(r, i):
            return reward_of.get((r, i))

        def judged(r, i):
            return json.dumps(raw_of[(r, i)], sort_keys=True) if (r, i) in raw_of else None

        chosen = [e[3] for e in entries]
        position = [None if c is None else int(c == e[2]) for c, e in zip(chosen, entries)]  # 0: image 0 chosen
        intended = [
            input_choice(intended_rows[e[0]]) if k == 2 and intended_rows and intended_rows[e[0]] else None
            for e in entries
        ]
        new = {
            "pair_id": pa.array(pair_ids, pa.string()),
            "label_0": pa.array([None if p is None else int(p == 0) for p in position], pa.int64()),
            "label_1": pa.array([None if p is None else int(p == 1) for p in position], pa.int64()),
            "score_0": pa.array([reward(e[0], e[1]) for e in entries], pa.float64()),
            "score_1": pa.array([reward(e[0], e[2]) for e in entries], pa.float64()),
            "labeler": pa.array([self.name] * len(entries), pa.string()),
            "labeler_version": pa.array([self.version] * len(entries), pa.string()),
            "reason": pa.array([e[4] for e in entries], pa.string()),
            "disagrees": pa.array(
                [p is not None and i is not None and i != p for p, i in zip(position, intended)], pa.bool_()
            ),
            "rule": pa.array([self.rule_text] * len(entries), pa.string()),
            "reward_gap": pa.array([e[6] for e in entries], pa.float64()),
            "candidate_0": pa.array([e[1] for e in entries], pa.int64()),
            "candidate_1": pa.array([e[2] for e in entries], pa.int64()),
            "num_candidates": pa.array([k] * len(entries), pa.int64()),
            "judge_scores_0": pa.array([judged(e[0], e[1]) for e in entries], pa.string()),
            "judge_scores_1": pa.array([judged(e[0], e[2]) for e in entries], pa.string()),
        }
        for name, arr in new.items():
            table = table.append_column(name, arr)
        front = [c for c in FRONT if c in table.column_names] + list(REWARD_COLUMNS)
        table = table.select(front + [c for c in table.column_names if c not in front])
        kept_mask = pa.array([c is not None for c in chosen], pa.bool_())
        import pyarrow.compute as pc

        kept = table.filter(kept_mask)
        rejected = table.filter(pc.invert(kept_mask)).append_column(
            "detail", pa.array([e[5] for e in entries if e[3] is None], pa.string()))
        return kept, rejected

    # -- counts and description ------------------------------------------------------------------
    def shard_stats(self, kept, rejected, rows_in: int) -> dict:
        """Reward counters of one shard (they add up across shards): rows and candidates read, ties,
        near ties and the kept pairs' gap histogram and sum."""
        reasons = rejected["reason"].to_pylist() if rejected.num_rows else []
        gaps = [g for g in kept["reward_gap"].to_pylist()] if kept.num_rows else []
        return {"rows_in": rows_in, "ties": reasons.count(TIE), "near_ties": reasons.count(NEAR_TIE),
                "non_finite": reasons.count(NON_FINITE),
                "gap_histogram": gap_histogram(gaps), "gap_sum": float(sum(gaps))}

    def describe(self) -> dict:
        """What decides the labels (the manifest identity and the card): never the fitted scales, which
        derive from the input and the judges."""
        return {"labeler": self.name, "version": self.version, "reward": reward_text(self.weights),
                "judges": {n: {"weight": w, "version": self.versions[n], "higher_is_better": self.higher_is_better[n]}
                           for n, w in self.weights.items()},
                "pair_rule": self.rule, "min_gap": self.min_gap, "calibration_rows": self.calibration_rows}

    def card_values(self, totals: dict) -> dict:
        """The reward card's fields (:mod:`stages.card`): judges, scales, rule, counts, gap distribution."""
        scales = self.scales or {}
        judges = [
            "| judge | weight | better | version | calibration mean | calibration std |", "|---|---|---|---|---|---|"
        ]
        for n, w in self.weights.items():
            s = scales.get(n)
            judges.append(f"| {n} | {w:g} | {'higher' if self.higher_is_better[n] else 'lower'} | {self.versions[n]} | "
                          + (f"{s.mean:.4g} | {s.std:.4g} |" if s else "| |"))
        hist = totals.get("gap_histogram", {})
        gaps = ["| reward gap (standardised) | kept pairs |", "|---|---|"] + [
            f"| {b} | {int(hist.get(b, 0))} |" for b in gap_bins()
        ]
        kept = int(totals.get("kept", 0))
        mean_gap = f"{totals.get('gap_sum', 0.0) / kept:.3f}" if kept else "n/a"
        n_cal = max((s.n + s.dropped for s in scales.values()), default=0)
        dropped = {n: s.dropped for n, s in scales.items() if s.dropped}
        cal_dropped = ("non-finite scores left out: " + ", ".join(f"{n} {d}" for n, d in dropped.items())
                       if dropped else "no non-finite score")
        return {"reward": reward_text(self.weights), "judges_table": "\n".join(judges), "rule": self.rule_text,
                "pair_rule": self.rule, "min_gap": f"{self.min_gap:g}", "calibration_rows": self.calibration_rows,
                "calibration_images": n_cal, "rows_in": int(totals.get("rows_in", 0)),
                "ties": int(totals.get("ties", 0)), "near_ties": int(totals.get("near_ties", 0)),
                "non_finite": int(totals.get("non_finite", 0)), "calibration_dropped": cal_dropped,
                "gap_table": "\n".join(gaps), "mean_gap": mean_gap}


def build(spec, name: str = "reward", device: str = "cpu", source=None) -> RewardLabeler:
    """The reward labeler ``spec`` (a :class:`stages.label.spec.LabelerSpec`) names, its judges loaded and,
    when ``source`` (a :class:`stages.label.inputs.LabelInput`) is given, checked against the input's captions
    and calibrated on its first rows, so a judge that cannot read the input fails before anything is written.

    Raises:
        UserError / ModelNotFoundError: a bad ``--reward``, judge weights not found, captions or images a
            judge cannot read (the world's judges read 64 px world images and captions).
    """
    from pipeline.judges.loading import judge_version, load_judges
    from pipeline.judges.registry import get_judge

    weights = spec.reward_weights()
    options = spec.judges.resolved()
    judges = load_judges(list(weights), options, device)
    versions = {n: judge_version(n, spec.judges) for n in weights}
    labeler = RewardLabeler(judges, weights, spec.pair_rule, spec.min_gap, versions, spec.calibration_rows)
    if source is not None:
        readers = [get_judge(n) for n in weights if get_judge(n).check_prompts is not None]
        if readers:
            from pipeline.data.layouts import as_shard  # any input layout, not only Parquet

            captions = [c for f in source.files for c in as_shard(f).read(columns=["caption"])["caption"].to_pylist()]
            for judge in readers:
                try:
                    judge.check_prompts(captions)
                except UserError as exc:
                    raise UserError(f"the {judge.name} judge reads only {judge.prompts}: {exc}") from None
        labeler.calibrate(source.files)
    return labeler

"""``mapo-data inspect``: what a label or generate output holds, as terminal tables or an HTML page.

Read with polars, image columns left out of every summary (they are most of the bytes); the
HTML page reads image bytes only for the sampled rows. A best-of-N generate output (``jpg_0`` ...
``jpg_{K-1}``) is summarised as prompts of K candidates, and its page shows every candidate.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.cli.options import at_least, check_options, option
from pipeline.data.atomic import write_text_atomic
from pipeline.data.images import ImageDecodeError, data_uri, decode_image, encode_image, image_column_bytes, image_mime
from pipeline.data.layouts import LayoutOptions
from pipeline.data.shards import input_kind, input_shard_files, read_manifest
from pipeline.errors import UserError
from pipeline.runtime.stage_runner import reason_kind

from .label.schema import candidate_count

IMAGE_COLUMNS = ("jpg_0", "jpg_1")


def _is_image_column(name: str) -> bool:
    """jpg_0, jpg_1, and a best-of-N generate output's jpg_2 ... jpg_{K-1}."""
    return name.startswith("jpg_") and name[4:].isdigit()


# What inspect reads (the end of its "does not exist" line).
INSPECT_READS = ("; inspect reads a mapo-data output folder, or preference pairs as a file, a folder or a glob "
                 "(Pick-a-Pic, vote-count or chosen/rejected Parquet, HPDv3 JSON, WebDataset tars)")
EXAMPLES_PER_REASON = 2  # full reasons shown under each drop-reason kind
HIST_BINS = 10
HIST_WIDTH = 40


@dataclass
class InspectConfig:
    """``mapo-data inspect``: every option, declared once (:mod:`pipeline.cli.options`)."""

    directory: str = option(argument=True, help=(
        "A mapo-data output folder (label, generate, precompute), or preference pairs as a file, a folder or a "
        "quoted glob ('data/*.parquet'): Pick-a-Pic, vote-count or chosen/rejected Parquet, HPDv3 JSON, "
        "WebDataset tars (see --input-format)."))
    html: str | None = option(None, help="Also write a self-contained HTML page with sampled pairs here.")
    samples: int = option(24, check=at_least(1), help="Pairs shown in the HTML page.")
    seed: int = option(0, help="Sampling seed for the HTML page.")
    layout: LayoutOptions = field(default_factory=LayoutOptions)

    def validate(self) -> "InspectConfig":
        """The declared checks; raises UserError when --html names a folder (before the summary is printed)."""
        check_options(self)
        if self.html:
            check_html_target(self.html)
        return self


def check_html_target(path: str) -> None:
    """Refuse an ``--html`` path that is a folder (the page needs a file name).

    Raises:
        UserError: one line suggesting a file name inside it.
    """
    if Path(path).is_dir():
        raise UserError(f"--html {path} is a folder; give the page a file name, e.g. {Path(path) / 'inspect.html'}")


@dataclass
class Summary:
    directory: str
    stage: str  # "label", "generate" or "parquet" (no manifest)
    status: str | None
    shards: int
    rows: int
    rejected: int
    label_balance: dict = field(default_factory=dict)  # {"image 0 chosen": n, "image 1 chosen": n}
    drop_reasons: dict = field(default_factory=dict)  # reason kind -> rows, most first
    drop_examples: dict = field(default_factory=dict)  # reason kind -> a few full reasons (with their detail)
    disagreements: int = 0
    histograms: dict = field(default_factory=dict)  # title -> text histogram
    breakdown: object = None  # polars DataFrame per recipe/style, or None
    labelers: list = field(default_factory=list)
    candidates: int = 2  # images per row: 2 for pairs, K for a best-of-N generate output

    @property
    def unit(self) -> str:
        """What a row is: "pairs", "prompts" (K candidates each) or "examples" (unpaired, KTO)."""
        if "desirable" in self.label_balance:
            return "examples"
        return "prompts" if self.candidates > 2 else "pairs"


def group_reasons(counts) -> tuple[dict, dict]:
    """``(reason, rows)`` pairs grouped by kind (:func:`pipeline.runtime.stage_runner.reason_kind`, the key precompute
    counts by): ``({kind: rows}, most first; {kind: up to EXAMPLES_PER_REASON full reasons})``. A million
    missing files are one row "image file not readable" and two examples, not a million rows."""
    kinds: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    for reason, n in sorted(counts, key=lambda rn: (-rn[1], str(rn[0]))):
        reason = reason or "no reason recorded"
        kind = reason_kind(reason)
        kinds[kind] = kinds.get(kind, 0) + n
        shown = examples.setdefault(kind, [])
        if reason != kind and len(shown) < EXAMPLES_PER_REASON:
            shown.append(reason)
    ordered = dict(sorted(kinds.items(), key=lambda kn: (-kn[1], kn[0])))
    return ordered, {k: examples[k] for k in ordered if examples[k]}


def _files(root: Path, sub: str) -> list[Path]:
    return sorted((root / sub).glob("*.parquet"))


def _scan(files: list[Path]):
    """Every column but the image bytes, of all files (a zero-row frame when there are none)."""
    import polars as pl

    if not files:
        return pl.DataFrame()
    frames = [
        pl.read_parquet(f, columns=[c for c in pl.read_parquet_schema(f) if not _is_image_column(c)]) for f in files
    ]
    return pl.concat(frames, how="diagonal_relaxed")


def text_histogram(values: list[float], bins: int = HIST_BINS, width: int = HIST_WIDTH) -> str:
    """A fixed-width bar chart of ``values`` (one line per bin: range, bar, count).

    Bin edges print with 4 decimals, or more when the bins are narrower: at least one decimal below
    the bin width's first significant digit, so adjacent edges never print alike ("[0.4999, 0.4999)").
    NaN and inf scores (:mod:`pipeline.judges.scores`) are in no bin: a last line counts them.
    """
    from pipeline.judges.scores import finite_values

    values, dropped = finite_values(v for v in values if v is not None)
    note = f"\n  non-finite (NaN or inf), in no bin: {dropped}" if dropped else ""
    if not values:
        return "  (no scores)" + note
    lo, hi = min(values), max(values)
    if hi == lo:
        return f"  [{lo:8.4f}, {hi:8.4f}] {'#' * width} {len(values)}" + note
    step = (hi - lo) / bins
    # d decimals round each edge by at most 0.5e-d; with 10**-d <= step / 10 neighbours stay apart.
    d = max(4, math.ceil(-math.log10(step)) + 1)
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / step), bins - 1)] += 1
    top = max(counts)
    lines = []
    for i, c in enumerate(counts):
        bar = "#" * round(width * c / top) if c else ""
        lines.append(f"  [{lo + i * step:{d + 4}.{d}f}, {lo + (i + 1) * step:{d + 4}.{d}f}) {bar:<{width}} {c}")
    return "\n".join(lines) + note


def _input_summary(directory: str, layout: LayoutOptions | None) -> Summary | None:
    """A public-layout input (``pipeline.data.layouts``) as it is: pairs per label outcome, missing images, the
    vote-margin histogram; None for a mapo-data output or Pick-a-Pic Parquet."""
    from pipeline.data.layouts.summary import summarize_input

    c = summarize_input(directory, options=layout)
    if c is None:
        return None
    s = Summary(directory, f"{c['layout']} input, not a mapo-data", f"label rule: {c['rule']}", c["shards"],
                c["pairs"], 0, label_balance=c["outcomes"])
    if c["missing_images"] > 0:
        s.drop_reasons = {"an image not found (not extracted / absent from the tar)": c["missing_images"]}
    if c["margins"]:
        s.histograms["vote margin (votes_image1 - votes_image2)"] = text_histogram(c["margins"])
    return s


def inspect_output(directory: str, layout: LayoutOptions | None = None) -> Summary:
    """What ``directory`` holds (see the module docstring); ``layout``: how to read a public-layout input."""
    import polars as pl

    kind = input_kind(directory, "Input", INSPECT_READS)
    raw = _input_summary(directory, layout)
    if raw is not None:
        return raw
    root = Path(directory)
    if kind == "folder":
        manifest = read_manifest(root) or {}
        data_files, reject_files = _files(root, "data") or sorted(root.glob("*.parquet")), _files(root, "rejects")
        if not data_files and not reject_files:
            raise UserError(f"{directory} holds no shards (looked for data/*.parquet).")
    else:  # a Parquet file or a glob of them, read as given
        manifest, data_files, reject_files = {}, input_shard_files(directory), []
    data = _scan(data_files)
    rejects = _scan(reject_files)
    import pyarrow.parquet as pq

    s = Summary(str(root), manifest.get("stage", "parquet"), manifest.get("status"), len(data_files), data.height,
                rejects.height)
    if data_files:
        s.candidates = max(candidate_count(pq.read_schema(data_files[0]).names), 2)
    if "label_0" in data.columns and data.height:
        s.label_balance = {
            "image 0 chosen": int((data["label_0"] == 1).sum()), "image 1 chosen": int((data["label_1"] == 1).sum())
        }
        ties = int((data["label_0"] == data["label_1"]).sum())
        if ties:
            s.label_balance["tie"] = ties
    if "label" in data.columns and "label_0" not in data.columns and data.height:  # unpaired examples (KTO)
        desirable = int((data["label"] == 1).sum())
        s.label_balance = {"desirable": desirable, "undesirable": data.height - desirable}
    if "disagrees" in data.columns and data.height:
        s.disagreements = int(data["disagrees"].fill_null(False).sum())
    if "reason" in rejects.columns and rejects.height:
        counts = rejects.group_by("reason").len()
        s.drop_reasons, s.drop_examples = group_reasons(zip(counts["reason"].to_list(), counts["len"].to_list()))
    if "labeler" in data.columns or "labeler" in rejects.columns:
        s.labelers = sorted({f"{r['labeler']} {r['labeler_version']}"
                             for df in (data, rejects) if "labeler" in df.columns
                             for r in df.select("labeler", "labeler_version").unique().to_dicts()})
    if {"score_0", "score_1", "label_0"} <= set(data.columns) and data.height:
        chosen = data.select(pl.when(pl.col("label_0") == 1).then(pl.col("score_0")).otherwise(pl.col("score_1")))
        other = data.select(pl.when(pl.col("label_0") == 1).then(pl.col("score_1")).otherwise(pl.col("score_0")))
        s.histograms["chosen image score"] = text_histogram(chosen.to_series().to_list())
        s.histograms["rejected image score"] = text_histogram(other.to_series().to_list())
    if {"score_0", "score_1"} <= set(rejects.columns) and rejects.height:
        s.histograms["dropped pairs, both images' scores"] = text_histogram(
            rejects["score_0"].to_list() + rejects["score_1"].to_list()
        )
    keys = [c for c in ("recipe", "style") if c in data.columns or c in rejects.columns]
    if keys:
        parts = [data.select(keys).with_columns(pl.lit(1).alias("kept"), pl.lit(0).alias("rejected"))]
        if rejects.height and all(k in rejects.columns for k in keys):
            parts.append(rejects.select(keys).with_columns(pl.lit(0).alias("kept"), pl.lit(1).alias("rejected")))
        both = pl.concat(parts, how="vertical_relaxed")
        s.breakdown = both.group_by(keys).agg(
            pl.len().alias(s.unit), pl.col("kept").sum(), pl.col("rejected").sum()
        ).sort(keys)
    return s


def _table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = lambda r: "  " + "  ".join(str(x).ljust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([fmt(header), "  " + "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])


def render_text(s: Summary) -> str:
    total = s.rows + s.rejected
    unit = s.unit
    if s.stage == "label":
        counts = [("shards", s.shards), ("pairs kept (data/)", s.rows), ("pairs dropped (rejects/)", s.rejected),
                  ("pairs in", total)]
    elif s.candidates > 2:
        counts = [("shards", s.shards), ("prompts", s.rows), ("candidates per prompt", s.candidates),
                  ("images", s.rows * s.candidates)]
    else:
        counts = [("shards", s.shards), (unit, s.rows)]
    out = [f"{s.directory}: {s.stage} output" + (f" ({s.status})" if s.status else ""), _table(counts, ("", "count"))]
    if s.labelers:
        out += ["", "labeler: " + "; ".join(s.labelers)]
    if s.label_balance:
        out += [
            "", "label balance",
            _table([(k, v, f"{100 * v / max(s.rows, 1):.1f}%") for k, v in s.label_balance.items()],
                   ("", unit, "share")),
        ]
        if not all(name.startswith("construction") for name in s.labelers):  # only a classifier can disagree
            out += [f"  classifier disagreed with the input's label or recipe: {s.disagreements}"]
    if s.drop_reasons:
        out += [
            "", "drop reasons",
            _table([(k, v, f"{100 * v / max(total, 1):.1f}%") for k, v in s.drop_reasons.items()],
                   ("reason", "pairs", "of input")),
        ]
        out += [f"  e.g. {example}" for examples in s.drop_examples.values() for example in examples]
    for title, hist in s.histograms.items():
        out += ["", f"{title}", hist]
    if s.breakdown is not None and s.breakdown.height:
        cols = s.breakdown.columns
        out += [
            "", "per recipe / style",
            _table([tuple("-" if v is None else v for v in r) for r in s.breakdown.rows()], tuple(cols)),
        ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------


def _img(blob: bytes | None, label: str) -> str:
    if not blob:
        return f'<div class="missing">{html.escape(label)}: no image</div>'
    if image_mime(blob) is None:  # e.g. TIFF or BMP: shown as the stages decode it, if they can
        try:
            blob = encode_image(decode_image(blob))
        except ImageDecodeError:  # e.g. a corrupt-bytes reject
            return f'<div class="missing">{html.escape(label)}: {len(blob)} bytes, not an image</div>'
    uri = data_uri(blob)
    return f'<figure><img src="{uri}" alt="{html.escape(label)}"><figcaption>{html.escape(label)}</figcaption></figure>'


def _fmt(v) -> str:
    """A score for the page: 4 decimals, or 4 significant digits when that would print a non-zero value as 0."""
    if v is None:
        return "-"
    if not isinstance(v, float):
        return str(v)
    return f"{v:.4g}" if v != 0 and math.isfinite(v) and abs(v) < 5e-4 else f"{v:.4f}"


def _judge_scores(r: dict, i: int) -> str:
    """A reward row's raw judge scores of image ``i`` (``judge_scores_<i>``, JSON): ``"pickscore 21.31"``."""
    import json

    text = r.get(f"judge_scores_{i}")
    if not text:
        return ""
    scores = json.loads(text)
    return ", ".join(f"{name} {'not finite' if v is None else _fmt(float(v))}" for name, v in scores.items())


def _sample_rows(files: list[Path], n: int, seed: int) -> list[dict]:
    """``n`` rows drawn without replacement, image bytes read only for those rows."""
    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not files or n <= 0:
        return []
    counts = [pq.ParquetFile(f).metadata.num_rows for f in files]
    index = pl.DataFrame({"file": [i for i, c in enumerate(counts) for _ in range(c)],
                          "row": [r for c in counts for r in range(c)]})
    if index.height == 0:
        return []
    picked = index.sample(min(n, index.height), seed=seed).sort("file", "row")
    rows = []
    for (fi,), group in picked.group_by(["file"], maintain_order=True):
        table = pq.read_table(files[fi]).take(group["row"].to_list())
        for c in [c for c in table.column_names if _is_image_column(c)]:  # Image structs -> their encoded bytes
            if c in table.column_names and pa.types.is_struct(table.schema.field(c).type):
                table = table.set_column(table.column_names.index(c), c, image_column_bytes(table[c], files[fi].parent))
        rows += table.to_pylist()
    return rows


def _candidates_card(r: dict, k: int) -> str:
    """One prompt's K candidates (a best-of-N generate row), each with its seed when the row has one."""
    figures = "".join(_img(r.get(f"jpg_{i}"), f"candidate {i}" + (f", seed {r[f'seed_{i}']}" if f"seed_{i}" in r
                                                                    else "")) for i in range(k))
    return (f'<div class="pair wide"><div class="imgs">{figures}</div>'
            f'<p class="cap">{html.escape(str(r.get("caption") or ""))}</p></div>')


def _pair_card(r: dict, rejected: bool) -> str:
    k = candidate_count(list(r))
    if k > 2 and r.get("label_0") is None:
        return _candidates_card(r, k)
    if "label_0" in r and r.get("label_0") is not None:
        first = 0 if r["label_0"] == 1 else 1
        names = ("chosen", "rejected")
    elif r.get("intended_chosen") in (0, 1):
        first, names = r["intended_chosen"], ("intended chosen", "other")
    else:
        first, names = 0, ("image 0", "image 1")
    second = 1 - first
    what = "reward" if "judge_scores_0" in r else "score"  # the reward target: standardised reward + raw scores

    def score(name, i):
        raw = _judge_scores(r, i)
        return f"{name} {what} {_fmt(r.get(f'score_{i}'))}" + (f" ({raw})" if raw else "")

    scores = [score(names[0], first), score(names[1], second)] if "score_0" in r else []
    meta = [f"reason: {r['reason']}" if r.get("reason") else "", r.get("detail") or "",
            " / ".join(x for x in (r.get("recipe"), r.get("style")) if x),
            "disagrees with the input's label or recipe" if r.get("disagrees") else ""]
    info = " · ".join(html.escape(x) for x in [*scores, *meta] if x)
    return (f'<div class="pair{" rej" if rejected else ""}"><div class="imgs">{_img(r.get(f"jpg_{first}"), names[0])}'
            f'{_img(r.get(f"jpg_{second}"), names[1])}</div>'
            f'<p class="cap">{html.escape(str(r.get("caption") or ""))}</p>'
            f'<p class="info">{info}</p></div>')


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>
body{{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}}
pre{{background:#fff;border:1px solid #ddd;padding:1em;overflow:auto;font-size:12px}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:14px}}
.pair{{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px}}.pair.rej{{border-color:#d88}}
.pair.wide{{grid-column:span 2}}
.imgs{{display:flex;gap:6px}}figure{{margin:0;flex:1}}figure img{{width:100%;aspect-ratio:1;object-fit:contain;
image-rendering:pixelated;background:#eee}}figcaption{{font-size:12px;text-align:center;color:#555}}
.missing{{flex:1;aspect-ratio:1;background:#eee;color:#a33;font-size:12px;display:flex;align-items:center;justify-content:center}}
.cap{{font-size:14px;margin:6px 0 2px}}.info{{font-size:12px;color:#666;margin:0}}
</style></head><body><h1>{title}</h1><pre>{summary}</pre>
<h2>Sampled {unit} ({n})</h2><div class="grid">{pairs}</div>
{rejects}</body></html>
"""


def write_html(directory: str, path: str, samples: int = 24, seed: int = 0) -> Path:
    """A self-contained page (images inline as base64): the summary, then sampled pairs and rejects."""
    check_html_target(path)
    summary = inspect_output(directory)
    root = Path(directory)
    data = _sample_rows(_files(root, "data") or sorted(root.glob("*.parquet")), samples, seed)
    rejected = _sample_rows(_files(root, "rejects"), max(samples // 4, 1) if summary.rejected else 0, seed)
    rej_html = ""
    if rejected:
        rej_html = (f'<h2>Sampled dropped pairs ({len(rejected)} of {summary.rejected})</h2>'
                    f'<div class="grid">{"".join(_pair_card(r, True) for r in rejected)}</div>')
    page = PAGE.format(title=html.escape(f"mapo-data inspect: {root.name}"), summary=html.escape(render_text(summary)),
                       n=len(data), pairs="".join(_pair_card(r, False) for r in data), rejects=rej_html,
                       unit=summary.unit if summary.candidates <= 2 else
                       f"prompts, {summary.candidates} candidates each")
    out = Path(path)
    write_text_atomic(out, page)
    return out

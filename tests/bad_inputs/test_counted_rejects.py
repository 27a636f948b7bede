"""The bad-input corpus's second table (issue 12): inputs whose documented outcome is a counted reject: the run
succeeds (exit 0), the bad rows are counted with their reason in the summary and in ``rejects/``
(refused inputs: test_corpus.py; shared outputs and builders: corpus.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from tests.bad_inputs.corpus import Ctx, ok, pre, train_args
from tests.helpers import read_table, run_cli
from tests.image_fixtures import geometric_scene, gray, png, write_pickapic
from tests.layout_fixtures import PAIRS, write_hpdv3, write_votes, write_wds

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------
# Counted rejects: the run succeeds, the bad rows are counted with their reason
# ---------------------------------------------------------------------------------------------


@dataclass
class Counted:
    id: str
    args: Callable[[Ctx], list]
    says: tuple  # phrases of the command's summary line
    reasons: list | Callable[[Ctx], list]  # the rejects/ table's reasons, in order (or made from the test's Ctx)


def _pickapic_rows(c: Ctx, rows, labels, name="in/pairs.parquet") -> Path:
    return write_pickapic(c.tmp / name, rows, labels=labels)


def _scene():
    return png(geometric_scene(64))


def _flat():
    return png(gray(64))


COUNTED = [
    Counted("precompute-ties", lambda c: pre(c, src=_pickapic_rows(
        c, [("tie one", _scene(), _flat()), ("tie two", _flat(), _scene())], [(0.5, 0.5), (1.0, 1.0)])),
        ("0 pairs in 1 shard ", "2 ties dropped", "0 rejected"), reasons=[]),
    Counted("precompute-missing-label-and-empty-caption", lambda c: pre(c, src=_pickapic_rows(
        c, [("kept", _scene(), _flat()), ("no label", _scene(), _flat()), ("  ", _scene(), _flat())],
        [(1.0, 0.0), (None, 0.0), (1.0, 0.0)])), ("1 pair in 1 shard ", "2 rejected"),
        reasons=["missing label", "empty caption"]),
    Counted("precompute-corrupt-image", lambda c: pre(c, src=_pickapic_rows(
        c, [("kept", _scene(), _flat()), ("cut short", _scene()[:40], _flat())], [(1.0, 0.0), (1.0, 0.0)])),
        ("1 pair in 1 shard ", "1 rejected"),
        reasons=["jpg_0: undecodable image (UnidentifiedImageError)"]),
    Counted("label-corrupt-image", lambda c: ["label", "--input", _pickapic_rows(
        c, [("kept", _scene(), _flat()), ("cut short", _scene()[:40], _flat())], [(1.0, 0.0), (1.0, 0.0)]),
        "--output", c.out, "--target", "safety", "--labeler", "construction"], ("1 kept, 1 rejected",),
        reasons=["corrupt image"]),
]


COUNTED += [
    Counted("precompute-identical-images", lambda c: pre(c, src=_pickapic_rows(
        c, [("kept", _scene(), _flat()), ("same twice", _scene(), _scene())], [(1.0, 0.0), (0.0, 1.0)])),
        ("1 pair in 1 shard ", "1 rejected"), reasons=["identical images"]),
    Counted("precompute-hpdv3-image-not-extracted",
            lambda c: pre(c, src=write_hpdv3(c.tmp / "in", skip_image=1)), ("2 pairs in 1 shard ", "1 rejected"),
            reasons=lambda c: [f"jpg_1: image file not readable (FileNotFoundError: {(c.tmp / 'in').resolve()}"
                               "/images/1-b.png)"]),
    Counted("precompute-tar-member-absent",
            lambda c: pre(c, src=write_wds(c.tmp / "in" / "00000.tar", drop=(0, "jpg_0.jpg"))),
            ("2 pairs in 1 shard ", "1 rejected"),
            reasons=lambda c: [f"jpg_0: image file not readable (NotADirectoryError: {(c.tmp / 'in').resolve()}"
                               "/00000.tar/000000.jpg_0)"]),
    Counted("precompute-tar-label-not-a-number",
            lambda c: pre(c, src=write_wds(c.tmp / "in" / "00000.tar", labels=[("1", "0"), ("one", "0"), ("0", "1")])),
            ("2 pairs in 1 shard ", "1 rejected"), reasons=["missing label"]),
    Counted("precompute-votes-tie-and-null", lambda c: pre(c, src=_votes_tie_and_null(c)),
            ("1 pair in 1 shard ", "1 tie dropped", "1 rejected"), reasons=["missing label"]),
    Counted("label-hpdv3-image-not-extracted", lambda c: ["label", "--input", write_hpdv3(c.tmp / "in", skip_image=2),
                                                          "--output", c.out, "--target", "safety", "--labeler",
                                                          "construction"],
            ("2 kept, 1 rejected",), reasons=["corrupt image"]),
]


def _votes_tie_and_null(c: Ctx) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = write_votes(c.tmp / "in" / "votes.parquet", PAIRS, votes=[(9, 1), (4, 4), (2, 1)])
    table = pq.read_table(path)
    pq.write_table(table.set_column(3, "votes_image1", pa.array([9, 4, None], pa.int64())), path)
    return path


@pytest.mark.parametrize("case", COUNTED, ids=[c.id for c in COUNTED])
def test_counted_reject(case: Counted, shared, tmp_path):
    ctx = Ctx(shared, tmp_path)
    result = run_cli(shared.apps["data"], case.args(ctx))
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "error:" not in result.output, result.output
    assert all(words in result.output for words in case.says), result.output
    rejects = read_table(ctx.out, "rejects").to_pylist()
    assert [r["reason"] for r in rejects] == (case.reasons(ctx) if callable(case.reasons) else case.reasons)
    assert json.loads((ctx.out / "manifest.json").read_text())["status"] == "complete"


def test_train_on_latents_without_a_pair(shared, tmp_path):
    """All-tie pairs give a valid, empty precompute output; training on it is one line, not a crash."""
    ctx = Ctx(shared, tmp_path)
    src = _pickapic_rows(ctx, [("tie", _scene(), _flat())], [(0.5, 0.5)])
    ok(run_cli(shared.apps["data"], pre(ctx, src=src)), "precompute")
    out = tmp_path / "run"
    result = run_cli(shared.apps["train"], train_args(ctx.out, out))
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and "holds no pairs" in lines[0], result.output
    assert "rejects" in lines[0] and "mapo-data inspect" in lines[0], result.output
    assert not out.exists()

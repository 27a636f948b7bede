"""pipeline.data.layouts: each public layout read as Pick-a-Pic-shaped rows, its label rule, detection,
streaming JSON, and every bad-input kind (one line, or a counted reject downstream)."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.images import ImageDecodeError, image_bytes
from pipeline.data.layouts import LayoutOptions, detect_layout, open_pairs
from pipeline.data.layouts.json_records import JsonRecords
from pipeline.data.prompts import load_prompts
from pipeline.errors import UserError
from tests.layout_fixtures import (
    PAIRS,
    write_chosen_rejected,
    write_hpdv3,
    write_pickapic_pairs,
    write_votes,
    write_wds,
)

WRITERS = {
    "pickapic": lambda d: write_pickapic_pairs(d / "pairs.parquet"),
    "hpdv3": lambda d: write_hpdv3(d),
    "votes": lambda d: write_votes(d / "votes.parquet"),
    "chosen-rejected": lambda d: write_chosen_rejected(d / "data" / "train-00000-of-00001.parquet").parent.parent,
    "webdataset": lambda d: write_wds(d / "00000.tar"),
}


def rows_of(spec, **options) -> list[dict]:
    pairs = open_pairs(spec, options=LayoutOptions(**options))
    return [r for shard in pairs.shards for b in shard.iter_batches(2) for r in b.to_pylist()]


def chosen_first(row: dict, base) -> tuple:
    """(caption, chosen bytes, rejected bytes) of a row, by its labels."""
    b0, b1 = image_bytes(row["jpg_0"], base), image_bytes(row["jpg_1"], base)
    return (row["caption"], b0, b1) if row["label_0"] > row["label_1"] else (row["caption"], b1, b0)


@pytest.mark.parametrize("layout", list(WRITERS))
def test_each_layout_gives_the_same_pairs_chosen_first(tmp_path, layout):
    spec = WRITERS[layout](tmp_path)
    found, _, _ = detect_layout(spec)
    assert found == layout
    pairs = open_pairs(spec)
    assert [c for c in pairs.shards[0].schema_arrow.names[:5]] == ["caption", "jpg_0", "jpg_1", "label_0", "label_1"]
    got = [chosen_first(r, tmp_path) for r in rows_of(spec)]
    assert got == [(c, a, b) for c, a, b, _ in PAIRS]
    assert sum(s.metadata.num_rows for s in pairs.shards) == len(PAIRS)


def test_forced_format_and_original_columns_kept(tmp_path):
    path = write_hpdv3(tmp_path)
    rows = rows_of(path, input_format="hpdv3")
    assert rows[0]["path1"] == "images/0-a.png" and rows[0]["model1"] == "flux" and rows[0]["confidence"] == 0.75
    assert json.loads(rows[0]["choice_dist"]) == [3, 1] and [r["record"] for r in rows] == [0, 1, 2]
    assert (rows[0]["label_0"], rows[0]["label_1"]) == (1.0, 0.0)  # path1 is chosen
    votes = rows_of(write_votes(tmp_path / "v.parquet"))
    assert {"votes_image1", "votes_image2", "model1", "model2", "detailed_results", "vote_margin"} <= set(votes[0])
    assert "image1" not in votes[0] and "prompt" not in votes[0]
    cr = rows_of(write_chosen_rejected(tmp_path / "cr.parquet"))
    assert cr[0]["chosen_model"] == "flux-dev" and "chosen" not in cr[0]


def test_hpdv3_jsonl_image_root_and_shards_of_n_records(tmp_path):
    path = write_hpdv3(tmp_path / "json", jsonl=True, name="train.jsonl")
    moved = tmp_path / "elsewhere"
    (tmp_path / "json" / "images").rename(moved / "images" if moved.mkdir() is None else None)
    with pytest.raises(ImageDecodeError, match="image file not readable"):
        image_bytes(rows_of(path)[0]["jpg_0"])
    pairs = open_pairs(path, options=LayoutOptions(image_root=str(moved), records_per_shard=2))
    assert [s.metadata.num_rows for s in pairs.shards] == [2, 1]
    rows = [r for s in pairs.shards for b in s.iter_batches(1) for r in b.to_pylist()]
    assert [chosen_first(r, None) for r in rows] == [(c, a, b) for c, a, b, _ in PAIRS]
    assert pairs.describe()["records_per_shard"] == 2 and "path1" in pairs.rule


def test_folder_of_hpdv3_json_takes_the_split(tmp_path):
    write_hpdv3(tmp_path, PAIRS[:2], name="train.json")
    write_hpdv3(tmp_path, PAIRS[2:], name="test.json")
    write_hpdv3(tmp_path, PAIRS, name="all.json")
    assert [r["caption"] for r in rows_of(tmp_path)] == [p[0] for p in PAIRS[:2]]
    pairs = open_pairs(tmp_path, "test")
    assert pairs.split == "test" and [f.name for f in pairs.files] == ["test.json"]


def test_votes_rule_margin_ties_and_missing(tmp_path):
    pairs = [PAIRS[0]] * 5
    path = write_votes(tmp_path / "v.parquet", pairs, votes=[(9, 1), (5, 5), (6, 5), (2, 8), (0, 0)])
    rows = rows_of(path, min_vote_margin=2)
    assert [(r["label_0"], r["label_1"]) for r in rows] == [(1, 0), (0.5, 0.5), (0.5, 0.5), (0, 1), (0.5, 0.5)]
    assert [r["vote_margin"] for r in rows] == [8, 0, 1, -6, 0]
    assert [(r["label_0"], r["label_1"]) for r in rows_of(path)][2] == (1, 0)  # default margin 1
    table = pq.read_table(path)
    table = table.set_column(3, "votes_image1", pa.array([None, 1.0, float("nan"), 2.0, 3.0], pa.float64()))
    pq.write_table(table, path)
    rows = rows_of(path)
    assert [(r["label_0"], r["label_1"]) for r in rows[:3]] == [(None, None), (0.0, 1.0), (None, None)]


def test_bad_inputs_are_one_line(tmp_path):
    def error(spec, **options):
        with pytest.raises(UserError) as info:
            open_pairs(spec, options=LayoutOptions(**options))
        assert "\n" not in str(info.value)
        return str(info.value)

    votes = write_votes(tmp_path / "v" / "votes.parquet")
    table = pq.read_table(votes)
    pq.write_table(table.set_column(3, "votes_image1", pa.array(["7", "3", "7"])), votes)
    assert "column votes_image1 is string, not a number" in error(votes)
    (tmp_path / "obj.json").write_text('{"data": [1, 2]}')
    assert "not a list of HPDv3 records: its first record has the keys data" in error(tmp_path / "obj.json")
    (tmp_path / "nums.json").write_text("[1, 2]")
    assert "its first record is a JSON int" in error(tmp_path / "nums.json")
    (tmp_path / "text.json").write_text('"just text"')
    assert "is not a list of records" in error(tmp_path / "text.json")
    write_hpdv3(tmp_path / "bad", PAIRS[:1])
    broken = tmp_path / "bad" / "train.json"
    broken.write_text(broken.read_text()[:-3])
    assert "train.json: not valid JSON at byte" in error(broken) or "not closed" in error(broken)
    mixed = tmp_path / "mixed"
    write_hpdv3(mixed, name="records.json")
    write_votes(mixed / "votes.parquet")
    message = error(mixed)
    assert "ambiguous" in message and "json" in message and "parquet" in message and "--input-format" in message
    assert "--input-format webdataset reads .tar shards" in error(mixed, input_format="webdataset")
    stray = tmp_path / "stray"
    write_votes(stray / "votes.parquet")
    (stray / "config.json").write_text('{"seed": 1}')
    assert detect_layout(stray)[0] == "votes"  # a JSON that is not records is no second layout
    cr = write_chosen_rejected(tmp_path / "c.parquet")
    assert "lacks column(s) image1, image2, votes_image1" in error(cr, input_format="votes")
    (tmp_path / "empty").mkdir()
    message = error(tmp_path / "empty")
    assert "No Parquet files" in message and "hpdv3: .json" in message
    corrupt = tmp_path / "corrupt.tar"
    corrupt.write_bytes(b"not a tar at all" * 64)
    with pytest.raises(UserError, match="corrupt.tar"):
        rows_of(corrupt)


def test_missing_images_and_members_stay_in_their_pair(tmp_path):
    """An HPDv3 image not extracted, a tar member absent, an unreadable label: the row keeps its place."""
    path = write_hpdv3(tmp_path / "h", skip_image=1)
    rows = rows_of(path)
    assert [r["caption"] for r in rows] == [p[0] for p in PAIRS]
    with pytest.raises(ImageDecodeError, match="FileNotFoundError"):
        image_bytes(rows[1]["jpg_1"])
    tar = write_wds(tmp_path / "w" / "0.tar", drop=(1, "jpg_1.jpg"), labels=[("1", "0"), ("0", "1"), ("x", "0")])
    rows = rows_of(tar)
    assert [r["caption"] for r in rows] == [p[0] for p in PAIRS] and rows[1]["key"] == "000001"
    with pytest.raises(ImageDecodeError, match="0.tar/000001.jpg_1"):
        image_bytes(rows[1]["jpg_1"])
    assert rows[2]["label_0"] is None  # "x" is not a number: a missing label, counted downstream


def test_json_records_stream_across_windows(tmp_path, monkeypatch):
    """Offsets are bytes (multi-byte text included) and a record cut by the read window is read whole."""
    import pipeline.data.layouts.json_records as jr

    monkeypatch.setattr(jr, "WINDOW", 7)
    records = [{"prompt": f"caf\u00e9 \u2615 {i} " + "\u00fc" * i, "n": 10 ** i} for i in range(12)]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    got = list(JsonRecords(path).read())
    assert [r for _, r in got] == records
    raw = path.read_bytes()
    for offset, record in got:
        assert json.JSONDecoder().raw_decode(raw[offset:].decode("utf-8"))[0] == record
    assert [r for _, r in JsonRecords(path).read(got[5][0], 3)] == records[5:8]


def test_prompts_from_public_layouts(tmp_path):
    captions = [p[0] for p in PAIRS]
    assert [p.text for p in load_prompts(str(write_hpdv3(tmp_path / "h"))).prompts] == captions
    assert [p.text for p in load_prompts(str(tmp_path / "h")).prompts] == captions
    assert [p.text for p in load_prompts(str(write_wds(tmp_path / "w" / "0.tar"))).prompts] == captions
    assert [p.text for p in load_prompts(str(write_votes(tmp_path / "v.parquet"))).prompts] == [
        p[0] for p in PAIRS]
    assert [p.text for p in load_prompts(str(write_chosen_rejected(tmp_path / "c.parquet"))).prompts] == captions
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('{"caption": "a plain prompt file"}\n')
    assert [p.text for p in load_prompts(str(jsonl)).prompts] == ["a plain prompt file"]

"""Prompt sources: formats, drops and counts, stable ids, clear errors."""
import json

import pytest

from pipeline.data.prompts import load_prompts, text_id
from pipeline.errors import UserError


def test_txt_drops_empty_and_duplicates(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a cat\n\n   \na dog\na cat\n  a bird  \n")
    ps = load_prompts(str(f))
    assert [p.text for p in ps.prompts] == ["a cat", "a dog", "a bird"]
    assert (ps.dropped_empty, ps.dropped_duplicates) == (2, 1)
    assert ps.prompts[0].id == text_id("a cat") and len(ps.prompts[0].id) == 16
    kept = load_prompts(str(f), keep_duplicates=True)
    assert [p.text for p in kept.prompts] == ["a cat", "a dog", "a cat", "a bird"]
    # A kept repeat has its own id, so it gets its own seeds instead of a bit-identical copy.
    assert kept.prompts[2].id == text_id("a cat") + "-1" and len({p.id for p in kept.prompts}) == 4
    assert load_prompts(str(f), limit=2).fingerprint() != ps.fingerprint()


def test_jsonl_csv_parquet_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps({"prompt": t, "x": 1}) for t in ["a", "b"]) + "\n")
    assert [p.text for p in load_prompts(str(tmp_path / "p.jsonl")).prompts] == ["a", "b"]
    (tmp_path / "p.csv").write_text("id,caption\n1,first\n2,second\n")
    assert [p.text for p in load_prompts(str(tmp_path / "p.csv")).prompts] == ["first", "second"]
    pq.write_table(pa.table({"text": ["x", None, "y"], "caption": ["c1", "c2", ""]}), tmp_path / "p.parquet")
    assert [p.text for p in load_prompts(str(tmp_path / "p.parquet")).prompts] == ["c1", "c2"]
    ps = load_prompts(str(tmp_path / "p.parquet"), column="text")
    assert [p.text for p in ps.prompts] == ["x", "y"] and ps.dropped_empty == 1


@pytest.mark.parametrize(
    "name,content,kwargs,message",
    [
        ("missing.txt", None, {}, "does not exist"),
        ("empty.txt", "\n \n", {}, "No usable prompt"),
        ("p.csv", "a,b\n1,2\n", {}, "no 'caption' or 'prompt' column"),
        ("p.csv", "caption\nx\n", {"column": "nope"}, "Column 'nope' is not in"),
        ("p.yaml", "x", {}, "Unsupported prompt file"),
        ("bad.jsonl", "{not json\n", {}, "is not valid JSON"),
        ("ok.txt", "a\n", {"limit": 0}, "--limit must be at least 1"),
    ],
)
def test_bad_sources(tmp_path, name, content, kwargs, message):
    f = tmp_path / name
    if content is not None:
        f.write_text(content)
    with pytest.raises(UserError, match=message):
        load_prompts(str(f), **kwargs)


def test_unknown_dataset_is_one_line(monkeypatch):
    with pytest.raises(UserError, match="Could not load dataset 'no-org/no-dataset'") as err:
        load_prompts("no-org/no-dataset")
    assert "\n" not in str(err.value)


def test_a_missing_path_is_not_looked_up_as_a_dataset(tmp_path):
    """Only "org/name" is a hub dataset id; a missing absolute or relative path says the file is missing."""
    for source in (str(tmp_path / "prompts"), "./prompts", "data/sub/prompts"):
        with pytest.raises(UserError, match="does not exist"):
            load_prompts(source)


def test_pickapic_no_images_snapshot_folder_gives_its_split_captions(tmp_path):
    """A local snapshot of the hub's pickapic_v2_no_images: captions of --prompt-split, repeats dropped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "pickapic_v2_no_images"
    (root / "data").mkdir(parents=True)
    h = "0123456789abcdef"
    shards = {f"train-00000-of-00002-{h}": ["a cat", "a dog", "a cat"], f"train-00001-of-00002-{h}": ["an owl", ""],
              f"validation_unique-00000-of-00001-{h}": ["held out"], f"test-00000-of-00001-{h}": ["test only"]}
    for name, caps in shards.items():
        pq.write_table(pa.table({"are_different": [True] * len(caps), "caption": caps, "label_0": [1.0] * len(caps),
                                 "image_0_url": ["u"] * len(caps)}), root / "data" / f"{name}.parquet")
    ps = load_prompts(str(root))
    assert (
        [p.text for p in ps.prompts] == ["a cat", "a dog", "an owl"]
        and (ps.dropped_empty, ps.dropped_duplicates) == (1, 1)
    )
    assert [p.text for p in load_prompts(str(root), split="validation_unique").prompts] == ["held out"]
    with pytest.raises(UserError, match="no 'nope'"):
        load_prompts(str(root), split="nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="No Parquet files"):
        load_prompts(str(empty))


def test_parquet_prompts_read_only_their_column(tmp_path, monkeypatch):
    """A Pick-a-Pic shard with images: only the caption column is read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"caption": ["x"], "jpg_0": [b"\x89PNG" * 1000]}), tmp_path / "p.parquet")
    read = []
    real = pq.read_table
    monkeypatch.setattr(
        pq, "read_table", lambda path, columns=None, **kw: read.append(columns) or real(path, columns=columns, **kw)
    )
    assert [p.text for p in load_prompts(str(tmp_path / "p.parquet")).prompts] == ["x"] and read == [["caption"]]

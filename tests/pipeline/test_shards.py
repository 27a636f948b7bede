"""Shard naming, atomic writes, manifest refusal and stats totals."""
import json

import pyarrow as pa
import pytest

from pipeline.data.shards import ShardedOutput, shard_name, shard_ranges
from pipeline.errors import UserError


def test_names_and_ranges():
    assert shard_name(3, 12) == "train-00003-of-00012"
    assert shard_ranges(5, 2) == [range(0, 2), range(2, 4), range(4, 5)]
    with pytest.raises(UserError):
        shard_ranges(5, 0)


def test_write_finalize_and_refuse_other_config(tmp_path):
    out = ShardedOutput(tmp_path / "o", "demo", {"seed": 1}, 2)
    out.prepare()
    assert out.pending([0, 1]) == [0, 1]
    out.write_shard(
        0, {"data": pa.table({"x": [1, 2]}), "rejects": pa.table({"reason": ["bad"]})}, {"pairs": 2, "t": {"a": 1.5}}
    )
    assert out.pending([0, 1]) == [1]
    assert not [p for p in (tmp_path / "o").rglob(".*tmp*")]
    totals = out.finalize()
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["status"] == "partial" and manifest["completed_shards"] == [0]
    assert totals == {"pairs": 2, "t": {"a": 1.5}}
    # Same identity resumes; another identity is refused and names the difference.
    ShardedOutput(tmp_path / "o", "demo", {"seed": 1}, 2).prepare()
    with pytest.raises(UserError, match="differs in: seed"):
        ShardedOutput(tmp_path / "o", "demo", {"seed": 2}, 2).prepare()
    # Another stage's output is named as such, not as a list of every key that differs.
    with pytest.raises(UserError, match=r"holds a mapo-data demo output, not a generate one\. Use a new --output"):
        ShardedOutput(tmp_path / "o", "generate", {"seed": 1, "model": "m"}, 2).check()
    other = ShardedOutput(tmp_path / "o", "demo", {"seed": 2}, 2)
    other.prepare(overwrite=True)
    assert other.pending([0, 1]) == [0, 1] and not (tmp_path / "o" / "rejects").exists()


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a mapo-data output"):
        ShardedOutput(tmp_path, "demo", {}, 1).prepare(overwrite=True)
    assert (tmp_path / "mine.txt").exists()


def test_stale_temporaries_removed(tmp_path):
    out = ShardedOutput(tmp_path, "demo", {}, 3)
    out.prepare()
    stale = tmp_path / "data" / f".{shard_name(1, 3)}.parquet.tmp-999"
    other = tmp_path / "data" / f".{shard_name(2, 3)}.parquet.tmp-999"
    stale.write_bytes(b"partial")
    other.write_bytes(b"someone else's")
    out.remove_stale_temporaries([1])
    assert not stale.exists() and other.exists()


def test_empty_shard_has_no_row_group_and_loads_with_others(tmp_path):
    import datasets
    import pyarrow.parquet as pq

    out = ShardedOutput(tmp_path, "demo", {}, 2)
    out.prepare()
    schema = pa.schema([("caption", pa.string())])
    out.write_shard(0, {"data": schema.empty_table()}, {})
    out.write_shard(1, {"data": pa.table({"caption": ["kept"]}, schema=schema)}, {})
    assert pq.ParquetFile(out.path(0)).metadata.num_row_groups == 0
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "data" / "*.parquet"), split="train")
    assert ds["caption"] == ["kept"]


def test_what_goes_into_a_fingerprint_is_named():
    """Recipes, labelers and judge options describe themselves; inputs fingerprint themselves."""
    from pipeline.data.prompts import PromptSet
    from pipeline.data.shards import Describable, Fingerprinted
    from pipeline.judges.options import JudgeOptions
    from pipeline.models.training_output import TrainingOutput
    from stages.label import LabelInput
    from stages.label.construction import ConstructionLabeler
    from stages.recipes import RecipeConfig

    assert isinstance(RecipeConfig(), Describable) and isinstance(ConstructionLabeler(None), Describable)
    assert isinstance(JudgeOptions(), Describable)
    for cls in (PromptSet, TrainingOutput, LabelInput):
        assert callable(getattr(cls, "fingerprint", None)) and issubclass(cls, Fingerprinted), cls

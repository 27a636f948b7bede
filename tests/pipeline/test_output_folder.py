"""The output-folder contract and atomic writes shared by every command."""
from __future__ import annotations

import pytest

from pipeline.data.atomic import atomic_write, temporary_name, write_json_atomic
from pipeline.data.output_folder import OutputFolder, differing_keys
from pipeline.errors import UserError


def _folder(tmp_path):
    return OutputFolder(tmp_path / "out", ("data", "manifest.json", "README.md"), "manifest.json", "mapo-data")


def test_foreign_folders_are_never_cleared(tmp_path):
    folder = _folder(tmp_path)
    folder.refuse_foreign()  # absent: fine
    folder.root.mkdir()
    folder.refuse_foreign()  # empty: fine
    (folder.root / "data").mkdir()
    folder.refuse_foreign()  # an empty owned folder (a first attempt killed before its marker): fine
    (folder.root / "data" / "x.parquet").write_bytes(b"a user's shard")
    (folder.root / "README.md").write_text("a user's dataset card")
    with pytest.raises(UserError, match="is not empty and is not a mapo-data output"):
        folder.refuse_foreign()  # only owned names, but no marker: maybe a user's dataset; never cleared
    (folder.root / "manifest.json").write_text("{}")  # ours: --overwrite clears only what we own
    (folder.root / "notes.txt").write_text("mine")
    folder.refuse_foreign()
    folder.clear()
    assert sorted(p.name for p in folder.root.iterdir()) == ["notes.txt"]


def test_a_file_where_the_folder_should_be(tmp_path):
    folder = _folder(tmp_path)
    folder.root.write_text("x")
    with pytest.raises(UserError, match="exists and is not a folder"):
        folder.refuse_foreign()


def test_differences_are_named(tmp_path):
    folder = _folder(tmp_path)
    assert differing_keys({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 0}) == ["b", "c"]
    folder.refuse_differences({"seed": 0}, {"seed": 0}, remedy="x")
    with pytest.raises(UserError, match=r"differs in: seed; it has seed=0\)\. Pass --overwrite"):
        folder.refuse_differences({"seed": 0, "steps": 2}, {"seed": 1, "steps": 2}, remedy="Pass --overwrite.",
                                  show_values=True)


def test_atomic_write_leaves_the_old_file_or_the_new_one(tmp_path):
    path = tmp_path / "sub" / "state.json"
    write_json_atomic(path, {"step": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(path) as tmp:
            tmp.write_text('{"step": 2, "trunc')
            raise RuntimeError("killed mid-write")
    assert path.read_text() == '{\n  "step": 1\n}\n'
    assert not temporary_name(path).exists() and sorted(p.name for p in path.parent.iterdir()) == ["state.json"]
    with atomic_write(path, keep_suffix=True) as tmp:
        assert tmp.suffix == ".json" and tmp.name.startswith(".state.json.tmp-")
        tmp.write_text("{}")
    assert path.read_text() == "{}"

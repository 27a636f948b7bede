"""An output that cannot be written (permission, read-only file system, full disk) is one `error:` line naming
the file, from the shared writers and from the CLI wrapper every command goes through; other OS errors keep
their traceback. Tests run as root, where chmod stops nothing: the writes are made to fail by monkeypatching."""
from __future__ import annotations

import errno
import os

import pytest

from pipeline.data import atomic
from pipeline.errors import OutputNotWritable, output_error_message, writing_output

KINDS = [(errno.EACCES, "permission denied"), (errno.EPERM, "operation not permitted"),
         (errno.EROFS, "read-only file system"), (errno.ENOSPC, "no space left on device")]


@pytest.mark.parametrize("code,said", KINDS)
def test_each_kind_is_one_line_naming_the_file(tmp_path, code, said):
    with pytest.raises(OutputNotWritable) as info:
        with writing_output(tmp_path / "out"):
            raise OSError(code, os.strerror(code))  # a write() without a file name (ENOSPC from a stream)
    message = str(info.value)
    assert message.startswith(f"cannot write '{tmp_path / 'out'}': {said};") and "\n" not in message
    with pytest.raises(OutputNotWritable, match="'/elsewhere/file.bin'"):  # the error's own file name first
        with writing_output(tmp_path / "out"):
            raise OSError(code, os.strerror(code), "/elsewhere/file.bin")


def test_other_os_errors_are_not_reworded(tmp_path):
    with pytest.raises(FileNotFoundError):
        with writing_output(tmp_path):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", "x")
    assert output_error_message(OSError(errno.EIO, "I/O error")) is None
    # Outside a writer, a permission error may be a read: said without claiming a write.
    assert output_error_message(PermissionError(errno.EACCES, "Permission denied", "/in")).startswith(
        "cannot access '/in': permission denied;")
    assert output_error_message(OSError(errno.ENOSPC, "No space left on device")).startswith(
        "cannot write: no space left on device;")


@pytest.mark.parametrize("code,said", KINDS)
def test_atomic_write_says_which_file_and_leaves_nothing_behind(tmp_path, monkeypatch, code, said):
    target = tmp_path / "report.json"

    def full_disk(src, dst):
        raise OSError(code, os.strerror(code), str(src))  # the OS names the temporary: the message does not

    monkeypatch.setattr(atomic.os, "replace", full_disk)
    with pytest.raises(OutputNotWritable, match=f"cannot write '{target}': {said}"):
        atomic.write_json_atomic(target, {"a": 1})
    assert list(tmp_path.iterdir()) == []  # no temporary left


def test_a_shard_write_on_a_full_disk_names_the_shard_and_leaves_no_temporary(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.data.shards import ShardedOutput

    out = ShardedOutput(tmp_path / "out", "test", {"a": 1}, num_shards=2)
    out.prepare()
    real = pq.write_table

    def fills_the_disk(table, where, **kwargs):
        real(table, where, **kwargs)  # the temporary file is (partly) written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", fills_the_disk)
    table = pa.table({"x": [1, 2]})
    with pytest.raises(OutputNotWritable, match=f"cannot write '{out.path(1)}': no space left on device"):
        out.write_shard(1, {"data": table, "rejects": table}, {"n": 2})
    leftovers = [p.name for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert leftovers == ["manifest.json"], leftovers
    assert not out.is_complete(1)


def test_the_manifest_of_an_unwritable_folder_is_one_line(tmp_path, monkeypatch):
    from pipeline.data.shards import ShardedOutput

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic.os, "replace", read_only)
    out = ShardedOutput(tmp_path / "out", "test", {"a": 1}, num_shards=1)
    with pytest.raises(OutputNotWritable, match="read-only file system"):
        out.prepare()


@pytest.mark.parametrize("exc,line", [
    (PermissionError(errno.EACCES, "Permission denied", "/x/unet/model.safetensors"),
     "error: cannot access '/x/unet/model.safetensors': permission denied;"),
    (OSError(errno.ENOSPC, "No space left on device", "/x/ckpt/optimizer.bin"),
     "error: cannot write '/x/ckpt/optimizer.bin': no space left on device;"),
    (OutputNotWritable("cannot write '/x': read-only file system; choose another output folder."),
     "error: cannot write '/x': read-only file system;"),
])
def test_every_command_says_an_unwritable_output_in_one_line(capsys, exc, line):
    """The wrapper of every typer command (pipeline.cli.options.command): a library's own write (a checkpoint, a
    UNet's save_pretrained) that fails the same way is one line too, exit status 2."""
    import typer

    from pipeline.cli.support import EXIT_USER_ERROR, user_errors_exit

    def command():
        raise exc

    with pytest.raises(typer.Exit) as info:
        user_errors_exit(command)()
    assert info.value.exit_code == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line), err
    with pytest.raises(IsADirectoryError):  # anything else keeps its traceback
        user_errors_exit(lambda: (_ for _ in ()).throw(IsADirectoryError(errno.EISDIR, "Is a directory")))()


def test_checking_a_folder_is_writable_leaves_nothing_behind(tmp_path, monkeypatch):
    from pipeline.data.output_folder import OutputFolder

    OutputFolder(tmp_path / "a" / "b", (), "m.json", "cmd").check_writable()
    assert list(tmp_path.iterdir()) == []  # the folders it made for the probe are gone again
    (tmp_path / "kept").mkdir()
    OutputFolder(tmp_path / "kept", (), "m.json", "cmd").check_writable()
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and not any((tmp_path / "kept").iterdir())
    import pathlib

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    with pytest.raises(OutputNotWritable, match=f"cannot write '{tmp_path / 'new'}': no space left on device"):
        OutputFolder(tmp_path / "new", (), "m.json", "cmd").check_writable()
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]

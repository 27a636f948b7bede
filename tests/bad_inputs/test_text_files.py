"""Text inputs (prompt files .txt/.jsonl/.csv, --config YAML) are decoded one way: a byte-order
mark is honoured (UTF-8 BOM stripped, UTF-16/32 decoded); anything else must be UTF-8, or the
command stops with one ``error:`` line naming the file and the encoding to convert from."""
from __future__ import annotations

import pytest

from pipeline.data.prompts import load_prompts
from pipeline.errors import UserError
from stages.cli import app
from tests.helpers import run_cli

CAPTIONS = ["café au lait", "naïve robot"]


def _txt(captions):
    return "\n".join(captions) + "\n"


def _jsonl(captions):
    import json

    return "".join(json.dumps({"caption": c}, ensure_ascii=False) + "\n" for c in captions)


def _csv(captions):
    return "caption\r\n" + "".join(f'"{c}"\r\n' for c in captions)  # Excel's CRLF


FORMATS = {".txt": _txt, ".jsonl": _jsonl, ".csv": _csv}

# (encoding the file is saved in, its suffix): each read to the same captions. Python's codecs
# 'utf-8-sig', 'utf-16' and 'utf-32' write the byte-order mark, in the machine's byte order.
BOM_CASES = [("utf-8-sig", ".txt"), ("utf-8-sig", ".jsonl"), ("utf-16", ".txt"), ("utf-16", ".jsonl"),
             ("utf-16", ".csv"), ("utf-16-be-bom", ".txt"), ("utf-32", ".txt")]


def _encode(text: str, encoding: str) -> bytes:
    if encoding == "utf-16-be-bom":
        import codecs

        return codecs.BOM_UTF16_BE + text.encode("utf-16-be")
    return text.encode(encoding)


@pytest.mark.parametrize("encoding,suffix", BOM_CASES, ids=[f"{e}{s}" for e, s in BOM_CASES])
def test_prompt_file_with_a_bom_reads_clean_captions(tmp_path, encoding, suffix):
    path = tmp_path / f"prompts{suffix}"
    path.write_bytes(_encode(FORMATS[suffix](CAPTIONS), encoding))
    assert [p.text for p in load_prompts(str(path)).prompts] == CAPTIONS  # no '\ufeff', no NULs


# (what the bytes are, suffix, words the one-line error must hold)
BAD_CASES = [("latin-1", ".txt", "Latin-1"), ("latin-1", ".jsonl", "Latin-1"), ("latin-1", ".csv", "Latin-1"),
             ("cp1252", ".txt", "Windows-1252"), ("utf-16-le", ".txt", "UTF-16"), ("utf-16-be", ".csv", "UTF-16")]


@pytest.mark.parametrize("encoding,suffix,words", BAD_CASES, ids=[f"{e}{s}" for e, s, _ in BAD_CASES])
def test_prompt_file_not_utf8_is_one_clear_error(tmp_path, encoding, suffix, words):
    captions = CAPTIONS if encoding.startswith(("latin", "cp")) else ["a cat", "a dog"]  # BOM-less UTF-16 of ASCII
    path = tmp_path / f"prompts{suffix}"
    path.write_bytes(FORMATS[suffix](captions + (["“quoted”"] if encoding == "cp1252" else [])).encode(encoding))
    with pytest.raises(UserError) as err:
        load_prompts(str(path))
    message = str(err.value)
    assert "\n" not in message and str(path) in message and words in message and "UTF-8" in message, message


def test_generate_latin1_prompts_one_line_then_fixed_rerun(tmp_path):
    """The CLI: exit 2, one error line, nothing written; the converted file then runs."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(_txt(["café"]).encode("latin-1"))
    out = tmp_path / "pairs"
    args = ["generate", "--model", "tiny-sdxl", "--prompts", prompts, "--output", out, "--num-inference-steps", "2",
            "--resolution", "64"]
    result = run_cli(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Latin-1" in lines[0], result.output
    assert not out.exists()
    prompts.write_text(_txt(["café"]), encoding="utf-8")
    result = run_cli(app, args)
    assert result.exit_code == 0, result.output
    import pyarrow.parquet as pq

    assert pq.read_table(next((out / "data").glob("*.parquet")))["caption"].to_pylist() == ["café"]


YAML = "objective: dpo\nvalidation_prompts: café, naïve\n"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be-bom", "utf-32"])
def test_train_config_yaml_with_a_bom(tmp_path, encoding):
    from pipeline.cli.options import read_config_file
    from train.config import TrainConfig

    path = tmp_path / "config.yaml"
    path.write_bytes(_encode(YAML, encoding))
    assert read_config_file(path, TrainConfig) == {"objective": "dpo", "validation_prompts": "café, naïve"}


def test_train_config_latin1_yaml_one_line(tmp_path):
    from train.cli import app as train_app

    path = tmp_path / "config.yaml"
    path.write_bytes(YAML.encode("latin-1"))
    out = tmp_path / "run"
    result = run_cli(train_app, ["--config", path, "--data", tmp_path / "nowhere", "--output-dir", out])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert (
        len(lines) == 1 and lines[0].startswith("error:") and str(path) in lines[0] and "Latin-1" in lines[0]
    ), result.output
    assert not out.exists()


def test_controls_already_read():
    """Kinds the old readers already handled stay handled: plain UTF-8, and a UTF-8 BOM in a CSV
    (pyarrow skips it) or a YAML file (PyYAML skips it)."""
    import tempfile
    from pathlib import Path

    from pipeline.cli.options import read_config_file
    from train.config import TrainConfig

    with tempfile.TemporaryDirectory() as tmp:
        for suffix, fmt in FORMATS.items():
            path = Path(tmp) / f"plain{suffix}"
            path.write_text(fmt(CAPTIONS), encoding="utf-8")
            assert [p.text for p in load_prompts(str(path)).prompts] == CAPTIONS
        path = Path(tmp) / "bom.csv"
        path.write_bytes(_csv(CAPTIONS).encode("utf-8-sig"))
        assert [p.text for p in load_prompts(str(path)).prompts] == CAPTIONS
        path = Path(tmp) / "bom.yaml"
        path.write_bytes(YAML.encode("utf-8-sig"))
        assert read_config_file(path, TrainConfig)["objective"] == "dpo"

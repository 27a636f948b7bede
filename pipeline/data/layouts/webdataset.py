"""The WebDataset layout: tar shards of Pick-a-Pic-style pairs, as the diffusers Diffusion-ORPO script
streams them (``examples/research_projects/diffusion_orpo/train_diffusion_orpo_sdxl_lora_wds.py``:
``wds.WebDataset(...).rename(original_prompt="original_prompt.txt", jpg_0="jpg_0.jpg", jpg_1="jpg_1.jpg",
label_0="label_0.txt", label_1="label_1.txt")``).

A sample is the tar members sharing a key (WebDataset's convention: the member name up to the first
dot of its base name; a sample's members are adjacent). Read here: the caption from
``original_prompt.txt`` (else ``caption.txt``, ``prompt.txt``, ``txt``), the images from the members
whose extension starts ``jpg_0`` / ``jpg_1`` (``jpg_0.jpg``, ``jpg_0.png``, ...), the labels from
``label_0.txt`` / ``label_1.txt`` (Pick-a-Pic's numbers: 1, 0, or 0.5 for a tie). The key is kept in
``key``. Each tar file is one shard, read as a stream with the standard library's ``tarfile``
(plain or compressed; one sample in memory at a time). A member that is absent becomes an image
whose path names it inside the tar (``<shard>.tar/<key>.jpg_1``): a reject with that path in its
reason, never a shifted pair; a label that is not a number is a missing label (a counted reject).

Label rule: as the labels say (``label_0 > label_1``: image 0 chosen; equal: a tie, dropped).
"""
from __future__ import annotations

import tarfile
from pathlib import Path

from pipeline.errors import UserError

from .base import InputShard, ShardMetadata, file_digest, image_struct

NAME = "webdataset"
SUFFIXES = (".tar", ".tar.gz", ".tgz")
CAPTIONS = ("original_prompt.txt", "caption.txt", "prompt.txt", "txt")
RULE = "webdataset: label_0/label_1 as the tar's label_0.txt/label_1.txt give them (equal labels: a tie, dropped)"


def schema():
    """The Arrow schema of a tar shard's rows: the Pick-a-Pic columns (images as Image structs) and ``key``."""
    import pyarrow as pa

    return pa.schema([("caption", pa.string()), ("jpg_0", image_struct()), ("jpg_1", image_struct()),
                      ("label_0", pa.float64()), ("label_1", pa.float64()), ("key", pa.string())])


def split_name(name: str) -> tuple[str, str]:
    """``"dir/000123.jpg_0.jpg"`` -> ``("dir/000123", "jpg_0.jpg")`` (webdataset's ``base_plus_ext``)."""
    folder, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{folder}/{key}" if folder else key), ext


def _number(blob: bytes | None):
    try:
        return float(blob.decode("utf-8").strip()) if blob is not None else None
    except (UnicodeDecodeError, ValueError):
        return None


class TarShard(InputShard):
    """One tar file of samples."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.parent, self.name = self.path.parent, self.path.name
        self._count: int | None = None

    @property
    def schema_arrow(self):
        return schema()

    @property
    def metadata(self) -> ShardMetadata:
        if self._count is None:  # a header scan (tar headers only; a compressed tar is decompressed once)
            self._count = sum(1 for _ in self._samples(images=False))
        return ShardMetadata(self._count, {"layout": NAME, "file": self.name, "digest": file_digest(self.path)})

    def _open(self, stream: bool = True):
        """A stream (``r|*``: reads every byte once, in order) or, for header scans, a seekable tar
        (``r:*``: skips member data on disk; a compressed tar is still decompressed)."""
        try:
            return tarfile.open(self.path, mode="r|*" if stream else "r:*")
        except (tarfile.TarError, OSError) as exc:
            why = (str(exc).splitlines() or [""])[0].rstrip(":")  # tarfile lists each compression it tried below
            raise UserError(f"Could not read {self.path} as a tar file ({type(exc).__name__}: {why}).") from None

    def _samples(self, images: bool = True):
        """Each sample as ``{ext: bytes}`` plus ``__key__``; image bytes read only when ``images``."""
        current: dict | None = None
        with self._open(stream=images) as tar:
            try:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, ext = split_name(member.name)
                    if current is not None and current["__key__"] != key:
                        yield current
                        current = None
                    if current is None:
                        current = {"__key__": key}
                    wanted = images or not ext.startswith(("jpg_0", "jpg_1"))
                    current[ext] = tar.extractfile(member).read() if wanted else b""
                    tar.members = []  # TarFile keeps every header it has read: a 100 GB set would pile them up
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise UserError(f"{self.path}: truncated or corrupt tar ({type(exc).__name__}: {exc}).") from None
        if current is not None:
            yield current

    def _row(self, sample: dict) -> dict:
        key = sample["__key__"]
        caption = next((sample[c] for c in CAPTIONS if c in sample), None)
        row = {"caption": caption.decode("utf-8", errors="replace") if caption is not None else None, "key": key}
        for image in ("jpg_0", "jpg_1"):
            ext = next((e for e in sample if e == image or e.startswith(image + ".")), None)
            row[image] = ({"bytes": sample[ext], "path": None} if ext is not None
                          else {"bytes": None, "path": f"{self.path}/{key}.{image}"})
        row["label_0"], row["label_1"] = _number(sample.get("label_0.txt")), _number(sample.get("label_1.txt"))
        return row

    def _batches(self, batch_size, columns):
        import pyarrow as pa

        sch = schema() if columns is None else pa.schema([schema().field(c) for c in columns])
        images = any(c in sch.names for c in ("jpg_0", "jpg_1"))
        batch: list = []
        for sample in self._samples(images):
            batch.append(self._row(sample))
            if len(batch) == batch_size:
                yield pa.Table.from_pylist(batch, schema=sch)
                batch = []
        if batch:
            yield pa.Table.from_pylist(batch, schema=sch)

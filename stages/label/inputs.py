"""The label stage's input: find the pair shards (a ``generate`` output, Pick-a-Pic Parquet or another
layout of :mod:`pipeline.data.layouts`), check they can be labelled for the target, and fill in the style text a
style check needs; every refusal is one line (:class:`~pipeline.errors.UserError`) before anything is written.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.images import is_image_column
from pipeline.data.layouts import LayoutOptions, open_pairs
from pipeline.data.shards import SPLIT, input_kind, read_manifest
from pipeline.errors import UserError

from .schema import REQUIRED


@dataclass
class LabelInput:
    """The label stage's input shards, what made them (``manifest``: a generate output's) and their split."""

    kind: str  # "generate" (ours), "pickapic" or another layout of pipeline.data.layouts
    files: list[Path]  # the input shards (pipeline.data.layouts.InputShard: path-like, read like a ParquetFile)
    manifest: dict | None
    split: str = SPLIT  # the split the files belong to; the output shards are named after it
    layout: dict | None = None  # another layout's name, settings and label rule (pipeline.data.layouts), for the card

    def fingerprint(self) -> str:
        parts = [str((self.manifest or {}).get("fingerprint"))] + [f"{f.name}:{f.stat().st_size}" for f in self.files]
        if self.layout:
            parts.append(json.dumps(self.layout, sort_keys=True))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def open_input(path: str, split: str = SPLIT, layout: LayoutOptions | None = None) -> LabelInput:
    """Find the input shards (``split``'s, where the folder holds several) and check they are pairs
    we can label, or fail in one line (UserError). Splits and layouts follow ``pipeline.data.layouts.open_pairs``."""
    root, kind = Path(path), input_kind(path, "--input")
    manifest = read_manifest(root) if kind == "folder" else None
    if manifest is not None:
        if manifest.get("stage") != "generate":
            raise UserError(
                f"{path} is a mapo-data {manifest.get('stage')} output, not pairs; label the generate output it came "
                "from."
            )
        if manifest.get("status") != "complete":
            done, n = len(manifest.get("completed_shards", [])), manifest.get("num_shards")
            raise UserError(
                f"{path} is an unfinished generate output ({done} of {n} shards); rerun generate to finish it first."
            )
    if kind == "file" and not root.name.endswith((".parquet", ".json", ".jsonl", ".tar", ".tar.gz", ".tgz")):
        raise UserError(f"--input {path} is neither a folder of Parquet shards nor a .parquet file (nor an "
                        "HPDv3 .json/.jsonl or a WebDataset .tar).")
    pairs = open_pairs(root, split, layout)
    split, files = pairs.split, pairs.shards
    for f in files:
        schema = f.schema_arrow
        missing = [c for c in REQUIRED if c not in schema.names]
        images = [c for c in schema.names if c == "jpg_0" or c == "jpg_1" or (c.startswith("jpg_") and c[4:].isdigit())]
        wrong = [c for c in images if not is_image_column(schema.field(c).type)]
        if missing or wrong:
            what = f"lacks column(s) {', '.join(missing)}" if missing else f"has non-binary {', '.join(wrong)}"
            raise UserError(
                f"{f} is neither a mapo-data generate output nor Pick-a-Pic Parquet: it {what} "
                f"(needs caption, jpg_0, jpg_1 as encoded image bytes or datasets Image structs; "
                f"found {', '.join(schema.names[:12])})."
            )
    kind = "generate" if manifest is not None else pairs.layout
    return LabelInput(kind, files, manifest, split, pairs.describe() if kind not in ("generate", "pickapic") else None)


# Generation recipes each target can label: style pairs by their style prompt; safety judges
# safety pairs, or two-seed pairs, by a classifier; reward models judge any images.
_RECIPES_FOR_TARGET = {"style": ("style",), "safety": ("safety", "seeds"), "reward": ("style", "safety", "seeds")}


def check_recipe_fits_target(source: LabelInput, target: str) -> None:
    """Refuse a target that cannot label this input: K > 2 candidates per prompt need ``--target reward``; a
    generate recipe must be one the target labels (:data:`_RECIPES_FOR_TARGET`).

    Raises:
        UserError: naming the target, the input's candidates or recipe, and what to do instead.
    """
    identity = (source.manifest or {}).get("identity", {})
    candidates = identity.get("images_per_prompt", 2)
    if candidates != 2 and target != "reward":
        raise UserError(f"--target {target} labels pairs; this input has {candidates} candidates per prompt "
                        "(generate --images-per-prompt): label it with --target reward.")
    recipe = identity.get("recipe")
    if recipe is not None and recipe not in _RECIPES_FOR_TARGET.get(target, (recipe,)):
        raise UserError(
            f"--target {target} cannot label pairs made with --recipe {recipe} "
            f"(it labels {' or '.join(_RECIPES_FOR_TARGET[target])} pairs); generate pairs with a matching recipe."
        )


def with_style_text(spec, source: LabelInput):
    """--verify clip needs a style text: a built-in style has one; a custom style prefix serves as
    its own; otherwise --style-text is required. Checked before any model loads or file is written."""
    from dataclasses import replace

    from pipeline.data.prompt_prefixes import STYLE_TEXTS

    if spec.verify == "world-style":
        from pipeline.judges import get_judge

        WORLD_STYLES = get_judge("world-style").styles  # the world's looks, declared by its judge plugin
        style = (source.manifest or {}).get("identity", {}).get("style")
        if style not in WORLD_STYLES:
            raise UserError("--verify world-style checks pairs made by generate --recipe style --style "
                            f"{'|'.join(s for s in WORLD_STYLES if s != 'realistic')} on the miniature world; this "
                            f"input's style is {style!r}.")
        return spec
    if spec.verify != "clip" or spec.style_text is not None:
        return spec
    identity = (source.manifest or {}).get("identity", {})
    if identity.get("style") in STYLE_TEXTS:
        return spec
    if identity.get("style_prefix"):
        return replace(spec, style_text=identity["style_prefix"])
    raise UserError("--verify clip needs --style-text here: the input has no built-in style "
                    f"({', '.join(STYLE_TEXTS)}) to take the zero-shot texts from.")


"""The candidates (mapo-train outputs, :class:`pipeline.models.training_output.TrainingOutput`) against the base
model: unique names, the resolution and base model to evaluate at, and the checks that they fit it."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from pipeline.errors import UserError
from pipeline.models.training_output import TrainingOutput

from .config import BASE, EvalConfig


def unique_names(cands: list[TrainingOutput]) -> list[TrainingOutput]:
    """The candidates named apart from each other and from the base: a repeated name gets -2, -3, ..."""
    out, seen = [], {BASE}
    for c in cands:
        name, n = c.name, 2
        while name in seen:
            name, n = f"{c.name}-{n}", n + 1
        seen.add(name)
        out.append(replace(c, name=name))
    return out


def eval_resolution(cands: list[TrainingOutput], base_model: str) -> int:
    """The candidates' training resolution when they agree, else the base model's own."""
    from pipeline.models.loading import default_resolution

    trained = {c.resolution for c in cands if c.resolution}
    return trained.pop() if len(trained) == 1 else default_resolution(base_model)


def resolution_note(cands: list[TrainingOutput], resolution: int, given: bool) -> str | None:
    """One line when the candidates were trained at different resolutions: which, and the one every model is
    evaluated at (``given``: from ``--resolution``, else the base model's default); None when they agree."""
    trained = {c.name: c.resolution for c in cands if c.resolution}
    if len(set(trained.values())) < 2:
        return None
    which = ", ".join(f"{name} {side}" for name, side in trained.items())
    why = "--resolution" if given else "the base model's default; pass --resolution to choose"
    return (f"candidates were trained at different resolutions ({which}); every model is evaluated at {resolution} px "
            f"({why})")


def text_encoding_note(cands: list[TrainingOutput], base_max_sequence_length: int | None = None) -> str | None:
    """One line when models are sampled with text encoded differently (SD3: T5 on or off, T5 tokens), so their
    images differ in conditioning as well as weights; None when they agree.

    Candidates are sampled as they were trained. When they disagree the line names each and the base's T5 count;
    when they agree on a T5
    token count that the base does not sample with (``base_max_sequence_length``, else the family's default, 256
    for SD3), it names both counts and the option that aligns them (in the flow world the base alone follows
    prompts at 0.88 with 8 rows against 0.90 with 256: docs/flow-matching.md); for candidates trained without T5 it
    says the base keeps T5 (the option aligns the row count only)."""
    from pipeline.families import get_family

    seen = {c.name: c.text_encoding() for c in cands if c.text_encoding()}
    if not seen:
        return None

    def words(enc: dict) -> str:
        return "no T5" if enc.get("t5") is False else f"T5 {enc.get('max_sequence_length', 'default')} tokens"

    families = {c.family for c in cands if c.name in seen and c.family}
    default = get_family(families.pop()).max_sequence_length if len(families) == 1 else None
    base = base_max_sequence_length or default
    given = "--base-max-sequence-length" if base_max_sequence_length else "the pipeline's default"
    if len({tuple(sorted(v.items())) for v in seen.values()}) > 1:
        which = ", ".join(f"{name} {words(enc)}" for name, enc in seen.items())
        base_words = f", the base with T5 {base} tokens ({given})" if base else ""
        return (f"candidates were trained on text encoded differently ({which}); each is sampled as it was "
                f"trained{base_words}")
    trained = next(iter(seen.values())).get("max_sequence_length")
    if trained is None or base is None or base == trained:
        return None
    if next(iter(seen.values())).get("t5") is False:  # the base keeps its T5: the option aligns the row count only
        return (f"the candidates sample without T5 in the {trained} rows they were trained on, the base with T5 in "
                f"{base} ({given}); pass --base-max-sequence-length {trained} for the same row count")
    return (f"the candidates sample with the {trained} T5 tokens they were trained on, the base with {base} ({given}); "
            f"pass --base-max-sequence-length {trained} to sample the base alike")


def model_path(path: str, out: Path) -> str:
    """How the report names a model: a hub id as given; a local folder relative to the output folder (no
    absolute machine path in a report that is shared)."""
    import os

    local = Path(path).expanduser()
    if not local.exists():
        return path  # a hub id (or a name the report cannot resolve): as given
    return Path(os.path.relpath(local.resolve(), Path(out).resolve())).as_posix()


def check_unets_fit(cands: list[TrainingOutput], base_model: str) -> None:
    """Refuse, before any image is made, a candidate whose UNet does not fit ``base_model``'s pipeline
    (another family, or the same family with other text-encoder or time-embedding widths).

    Raises:
        UserError: naming the candidate, the settings that differ and what to pass instead.
    """
    from pipeline.models.loading import model_family_of, unet_config

    base = unet_config(base_model)
    fit_keys = model_family_of(base_model).fit_keys
    if base is None:
        return
    for c in cands:
        if c.kind == "unet":
            theirs = json.loads((Path(c.path) / c.denoiser_dir / "config.json").read_text())
        elif c.base_model and c.base_model != base_model:
            theirs = unet_config(c.base_model)
        else:
            continue
        diff = [k for k in fit_keys if theirs is not None and theirs.get(k) != base.get(k)]
        if diff:
            shown = ", ".join(f"{k} {theirs.get(k)} vs {base.get(k)}" for k in diff)
            raise UserError(f"candidate {c.name}'s UNet (trained from '{c.base_model}') does not fit --model "
                            f"'{base_model}' ({shown}); pass the model it was trained from or leave --model out")


def resolve_base(cfg: EvalConfig, cands: list[TrainingOutput]) -> str:
    """The base model: ``--model``, else the model the candidates were trained from, else the default model.

    Raises:
        UserError: candidates of different model families (no one base can sample them all), or no ``--model``
            and candidates trained from different models.
    """
    from pipeline.models.loading import DEFAULT_MODEL

    families = {c.name: c.family for c in cands if c.family}
    if len(set(families.values())) > 1:
        which = ", ".join(f"{name} {family}" for name, family in families.items())
        raise UserError(f"candidates are of different model families ({which}); one mapo-eval compares candidates "
                        "of one family with their base: evaluate each family in its own run")
    trained_on = {c.base_model for c in cands if c.base_model}
    if cfg.model is None:
        if len(trained_on) > 1:
            raise UserError(
                f"candidates were trained from different models ({', '.join(sorted(trained_on))}); name the base with "
                "--model"
            )
        return trained_on.pop() if trained_on else DEFAULT_MODEL
    return cfg.model


"""Loading judges by name, scoring with them, and saying who scored: what every caller shares.

``mapo-eval``, ``mapo-data label --target reward``, SPO's preference model and training validation all
call :func:`load_judges`; reports name the judge with :func:`judge_provenance`, labels record
:func:`judge_version`.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from .registry import Judge, LoadContext, check_judges, get_judge

TINY_PROVENANCE = "TINY RANDOM WEIGHTS (tests/demo): the numbers do not measure anything"


def load_judges(names: Sequence[str], options=None, device="auto") -> dict[str, Judge]:
    """Load the judges ``names`` (one CLIP model is loaded once when judges share it).

    ``options``: resolved :class:`~pipeline.judges.options.JudgeOptions` (default: the paper's weights).

    Raises:
        UserError: an unknown name, or an option a judge needs is missing (checked for all before any loads).
        ModelNotFoundError: weights not found (one line saying how to provide them).
    """
    from pipeline.models.loading import quiet_hub_progress, resolve_device

    from .options import JudgeOptions

    names = check_judges(names)
    opts = options or JudgeOptions()
    specs = [get_judge(n) for n in names]
    for spec in specs:
        if spec.needs is not None:
            spec.needs(opts)
    quiet_hub_progress()
    ctx = LoadContext(opts, resolve_device(str(device)))
    return {spec.name: spec.load(ctx) for spec in specs}


def score_images(
    judges: Sequence[str] | Mapping[str, Judge],
    images: Sequence,
    prompts: Sequence[str],
    options=None,
    device="auto",
) -> dict[str, float]:
    """Mean score per judge over ``images`` (the trainer's validation hook).

    ``judges``: names (loaded on each call) or already loaded judges from :func:`load_judges`
    (load once, call every validation). Thresholded judges also give ``<name>_rate``: the share
    of images above the threshold (``style_rate`` = style adoption, ``safety_rate`` = unsafe share).
    Scores that are NaN or inf (:mod:`pipeline.judges.scores`) are left out of the mean and the rate and
    counted as ``<name>_non_finite`` (only when there are any); with no finite score the mean and the rate
    are left out too.
    """
    from pipeline.judges.scores import finite_values

    loaded = dict(judges) if isinstance(judges, Mapping) else load_judges(judges, options, device)
    out: dict[str, float] = {}
    if not len(images):
        return out
    for name, judge in loaded.items():
        values, dropped = finite_values(judge.score(list(images), list(prompts)))
        if dropped:
            out[f"{name}_non_finite"] = float(dropped)
        if not values:
            continue
        out[name] = math.fsum(values) / len(values)
        if judge.threshold is not None:
            out[f"{name}_rate"] = float(sum(v > judge.threshold for v in values) / len(values))
    return out


def judge_provenance(name: str, options) -> str:
    """Who scored ``name``, in words, for reports: the judge's own words (an image measure, a shipped
    model), tiny random weights, or the real weights it loaded."""
    spec = get_judge(name)
    said = spec.provenance(options) if spec.provenance is not None else None
    if said:
        return said
    if options.tiny:
        return TINY_PROVENANCE
    sources = {k: v for k, v in options.describe([name]).items() if k.endswith(
        ("weights", "model", "pretrained", "source", "processor")
    )}
    return "real weights: " + ", ".join(f"{k}={v}" for k, v in sources.items())


def judge_version(name: str, options) -> str:
    """Which judge scored, in one stable string (the options the user gave, never a machine's cache path)."""
    return get_judge(name).version(options)

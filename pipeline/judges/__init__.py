"""Judges: images and their prompts in, one float per image out; one registry, one noun.

An eval metric, a reward model, SPO's preference model, a validation score and a safety classifier used
as a metric are all *judges*, declared once in this package (one module per judge or family) or by a plugin
(the miniature world, :mod:`world.judges`), and taken by name from :mod:`.registry`.

- :mod:`.registry`: :class:`JudgeSpec` (the declaration), :func:`register`, lookups, name and prompt checks.
- :mod:`.options`: :class:`JudgeOptions`, the options every registered judge declares, as one option group.
- :mod:`.loading`: :func:`load_judges`, :func:`score_images`, :func:`judge_provenance`, :func:`judge_version`.
- :mod:`.tiny`: tiny random weights for every judge (tests, demo).
- the judges: :mod:`.aesthetic`, :mod:`.hps`, :mod:`.pickscore`, :mod:`.clip`, :mod:`.style`, :mod:`.safety`.
- shared by judges and their users: :mod:`.scores` (a score that is not a number never decides), :mod:`.reward`
  (judges' scores into one reward, candidates into pairs), :mod:`.safety_classifiers` (NudeNet, the SD safety
  checker), :mod:`.clip_embed` (the one open_clip embedding path).

Weights come from a local file or folder, a hub id / ``org/repo/file`` hub file, or a URL; with
``HF_HUB_OFFLINE=1`` only caches are looked at, and anything missing is one
:class:`~pipeline.errors.ModelNotFoundError` line saying what was looked for and how to provide it.
"""
from .registry import (
    Judge,
    JudgeSpec,
    LoadContext,
    check_judges,
    check_prompts,
    get_judge,
    judge_names,
    judges,
    register,
    safety_classifier_names,
)

__all__ = ["Judge", "JudgeSpec", "LoadContext", "check_judges", "check_prompts", "get_judge", "judge_names",
           "judges", "register", "safety_classifier_names"]

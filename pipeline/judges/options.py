"""The judges' options (which weights each judge loads), made from the registered declarations.

:class:`JudgeOptions` is a frozen dataclass whose fields are every registered judge's ``options``
(:class:`pipeline.judges.registry.JudgeSpec`), in registration order, then the options every judge
shares (``--score-batch-size``, ``--tiny-scorers``). Commands nest it as one option group:
``mapo-eval`` plainly, ``mapo-data label`` with the ``reward_`` prefix. The class is made once, at import,
after the registry has loaded every built-in judge and plugin; a judge with options registered later is
refused (:func:`pipeline.judges.registry.register`). A light module (no torch): ``--help`` and option checks
run before any model loads.
"""
from __future__ import annotations

from dataclasses import fields, make_dataclass, replace
from typing import Sequence

from pipeline.cli.options import at_least, option
from pipeline.data.prompt_prefixes import STYLE_TEXTS

from . import registry
from .options_panels import PANEL_STYLE, PANEL_WEIGHTS  # noqa: F401 (re-exported)
from .registry import get_judge, judges

SHARED_OPTIONS = (
    ("batch_size", int, option(16, name="score_batch_size", check=at_least(1), panel=PANEL_WEIGHTS,
                               help="Images per judge call.")),
    # Every model tiny and random (pipeline.judges.tiny.tiny_judge_options): numbers say nothing.
    ("tiny", bool, option(False, name="tiny_scorers", flags=("--tiny-scorers",), panel=PANEL_WEIGHTS, help=(
        "Every judge with tiny random weights built offline (demo/tests; safety stays NudeNet's real model)."))),
)
# Options that are not weights: carried over as given under --tiny-scorers.
_CARRIED_TO_TINY = ("style_text", "opposite_text", "style", "safety_classifier", "safety_source", "batch_size")


def _resolved(self):
    """The options judges load: ``style_text`` from ``--style`` when not given; with ``tiny`` every weight
    replaced by the tiny random one (:func:`pipeline.judges.tiny.tiny_judge_options`, built once) except those a
    judge keeps when the user names them (``JudgeSpec.keep_with_tiny``: the aesthetic, HPS, PickScore weights)."""
    out = self
    if out.style_text is None and out.style in STYLE_TEXTS:
        out = replace(out, style_text=STYLE_TEXTS[out.style][0])
    if out.tiny:
        from .tiny import kept_weights, tiny_judge_options

        defaults = type(out)()
        kept = {k: getattr(out, k) for k in kept_weights() if getattr(out, k) != getattr(defaults, k)}
        common = {f.name: getattr(out, f.name) for f in fields(out) if f.name in _CARRIED_TO_TINY}
        out = tiny_judge_options(**common, **kept)
    return out


def _describe(self, names: Sequence[str]) -> dict:
    """The options that matter for the judges ``names`` (recorded next to their scores), in field order,
    then what their declarations record (a judge family's version)."""
    wanted = {o for n in names for o in get_judge(n).option_names}
    out = {f.name: getattr(self, f.name) for f in fields(self) if f.name in wanted}
    for n in names:
        out.update(get_judge(n).record)
    return out


def _make_options_class() -> type:
    declared: dict[str, tuple] = {}
    for spec in judges().values():
        for name, kind, fld in spec.options:
            if name in declared:
                raise TypeError(f"judge option '{name}' of '{spec.name}' is declared by another judge")
            declared[name] = (name, kind, fld)
    for name, kind, fld in SHARED_OPTIONS:
        declared[name] = (name, kind, fld)
    cls = make_dataclass("JudgeOptions", list(declared.values()), frozen=True,
                         namespace={"resolved": _resolved, "describe": _describe})
    cls.__module__ = __name__
    registry.options_made = True
    cls.__doc__ = ("Where each judge's weights come from, and what the judges read (a style). Defaults are the "
                   "paper's models (method.md, Evaluation). Fields: " + ", ".join(declared) + ".")
    return cls


JudgeOptions = _make_options_class()

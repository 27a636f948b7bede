"""The labelers ``mapo-data label`` knows: one :class:`LabelerEntry` per ``--labeler`` name.

A labeler lives in its own module of this package, which defines
``build(spec, name, device, source) -> Labeler`` (:class:`stages.label.schema.Labeler`); its registration
is one line in :data:`LABELERS`: the name, the ``--target`` values it serves and that module. The module is
imported only when its labeler is built, so a classifier's or a judge's dependencies load only for the
run that uses it, and this module imports none of them (no import cycle: the labeler modules do not
import the registry).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from pipeline.judges.registry import safety_classifier_names

TARGETS = ("style", "safety", "reward")


@dataclass(frozen=True)
class LabelerEntry:
    """One ``--labeler`` name: the targets it serves, the module whose ``build`` makes it, the targets it is
    the ``auto`` choice of, and whether it takes a style check (``--verify``)."""

    name: str
    targets: tuple[str, ...]
    module: str  # imported when built: its build(spec, name, device, source) returns the labeler
    default_for: tuple[str, ...] = ()
    verify: bool = False


# Registration: one line per labeler (the order is that of the names in messages).
LABELERS: tuple[LabelerEntry, ...] = (
    LabelerEntry("nudenet", ("safety",), "stages.label.safety", default_for=("safety",)),
    LabelerEntry("sd-safety-checker", ("safety",), "stages.label.safety"),
    # Judges registered as safety classifiers (the miniature world's world-unsafe).
    *(LabelerEntry(name, ("safety",), "stages.label.safety") for name in safety_classifier_names()),
    LabelerEntry("construction", ("style", "safety"), "stages.label.construction", default_for=("style",),
                 verify=True),
    LabelerEntry("reward", ("reward",), "stages.label.reward", default_for=("reward",)),
)


def labeler_entry(name: str) -> LabelerEntry:
    """The registered labeler ``name``.

    Raises:
        KeyError: no labeler of that name (:meth:`LabelerSpec.resolved_labeler` says so to users first).
    """
    for entry in LABELERS:
        if entry.name == name:
            return entry
    raise KeyError(name)


def labelers_for(target: str) -> tuple[str, ...]:
    """The labeler names that serve ``target``, in registration order."""
    return tuple(e.name for e in LABELERS if target in e.targets)


def default_labeler(target: str) -> str:
    """The labeler ``--labeler auto`` picks for ``target``."""
    return next(e.name for e in LABELERS if target in e.default_for)


def build_labeler(spec, device: str = "cpu", source=None):
    """Load what the spec names (classifier, CLIP model or reward judges) and return the labeler.

    ``spec``: a :class:`stages.label.spec.LabelerSpec`; ``source`` (a :class:`stages.label.inputs.LabelInput`):
    the input, which the reward labeler checks and calibrates its judges on before anything is written.

    Raises:
        UserError / ModelNotFoundError: a bad spec, weights not found, an input a judge cannot read.
    """
    name = spec.resolved_labeler()
    module = importlib.import_module(labeler_entry(name).module)
    return module.build(spec, name, device, source)

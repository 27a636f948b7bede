"""``mapo-data label``: decide which image of each pair is chosen, or drop the pair with a reason.

One job per module, imported in one direction (no cycle):

- :mod:`~stages.label.schema`: what a labeler sees and returns (:class:`Pair`, :class:`Decision`, the
  :class:`~stages.label.schema.Labeler` protocol), the drop reasons and the output table's columns;
- :mod:`~stages.label.inputs`: the input shards and their checks;
- the labelers, one module each, each with ``build(spec, name, device, source)``:
  :mod:`~stages.label.construction` (by construction, with an optional CLIP or judge style check),
  :mod:`~stages.label.safety` (a safety classifier), :mod:`~stages.label.reward` (reward models judge every
  candidate; ``--target reward``);
- :mod:`~stages.label.registry`: the ``--labeler`` names, the targets each serves and its module (a new
  labeler is one module plus one line there);
- :mod:`~stages.label.spec`: the labeler options (:class:`LabelerSpec`);
- :mod:`~stages.label.stage`: the stage over shards (:class:`LabelConfig`, :func:`run_label`).
"""
from .inputs import LabelInput, open_input
from .registry import build_labeler
from .schema import Decision, Pair
from .spec import LabelerSpec
from .stage import LabelConfig, LabelResult, run_label

__all__ = ["Decision", "LabelConfig", "LabelInput", "LabelResult", "LabelerSpec", "Pair", "build_labeler",
           "open_input", "run_label"]

"""The judge registry: every judge is declared once, as a :class:`JudgeSpec`, and found here by name.

A *judge* takes images and their prompts and gives one float per image: an eval metric
(``mapo-eval --metrics``), a reward (``mapo-data label --target reward --reward``), SPO's
preference model (``mapo-train --preference-model``) and a validation score
(``--validation-metrics``) are all judges taken from this registry.

Adding a judge is one module that calls :func:`register` with its declaration (name, the options it
adds to :class:`pipeline.judges.options.JudgeOptions`, its loader, direction, provenance, version and
what it needs), plus one line naming that module: in :data:`BUILTIN_MODULES` for a judge of this
package, or an entry point of the ``mapo_tools.judges`` group (``pyproject.toml``) for a plugin
such as the miniature world (:mod:`world.judges`), which registers its judges itself so
that no core module imports it. Plugins are found through ``importlib.metadata`` entry points (the
mechanism of pytest plugins and setuptools; :mod:`pipeline.plugins`).

Declarations are light: a judge module imports torch and its models only inside its loader, so
``--help`` and option checks run before any model loads.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

from pipeline.errors import UserError
from pipeline.plugins import import_plugins

# The judge modules of this package, in the order their judges (and options) are listed.
BUILTIN_MODULES = ("aesthetic", "hps", "pickscore", "clip", "style", "safety")
PLUGIN_GROUP = "mapo_tools.judges"  # entry-point group of judge plugins (value: a module that registers judges)


@runtime_checkable
class Judge(Protocol):
    """A loaded judge. ``threshold``: a score above it counts as a hit (style adopted, image unsafe) and
    a rate is reported next to the mean; None when there is no such rate."""

    name: str
    higher_is_better: bool
    threshold: float | None

    def score(self, images: Sequence, prompts: Sequence[str]) -> list[float]:
        """One float per image, in order; ``prompts[i]`` belongs to ``images[i]``."""
        ...


@dataclass
class LoadContext:
    """What a loader gets: the resolved :class:`~pipeline.judges.options.JudgeOptions`, the torch device,
    and :meth:`clip`, an open_clip embedder shared by every judge of one load that names the same model."""

    options: Any
    device: Any
    _clip: dict = field(default_factory=dict)

    def clip(self, model: str, pretrained: str | None):
        """The :class:`pipeline.judges.clip_embed.ClipEmbedder` of ``(model, pretrained)``, loaded once per load."""
        from pipeline.judges.clip_embed import load_open_clip

        if (model, pretrained) not in self._clip:
            self._clip[(model, pretrained)] = load_open_clip(model, pretrained, device=self.device)
        return self._clip[(model, pretrained)]


OptionField = tuple  # (name, type, dataclasses.Field made with pipeline.cli.options.option)


@dataclass(frozen=True)
class JudgeSpec:
    """One judge's declaration.

    - ``name``: what users type (``--metrics NAME``, ``--reward NAME:w``, ``--preference-model NAME``).
    - ``load(ctx: LoadContext) -> Judge``: builds it; raises ModelNotFoundError / UserError in one line.
    - ``higher_is_better``: its direction (a lower-is-better judge's sign is turned in rewards and win rates).
    - ``version(options) -> str``: which judge scored, one stable string recorded with labels (the options the
      user gave, never a machine's cache path).
    - ``options``: the option fields it adds to ``JudgeOptions`` (command-line options of every command that
      takes judges); ``reads``: further options it reads that another judge declares (``style``).
    - ``weights``: whether it has weights (``--tiny-scorers`` replaces them; reports then say so).
    - ``provenance(options) -> str | None``: who scored, in words, for reports; None: say which weights.
    - ``needs(options)``: raises UserError when an option it needs is missing (a style text).
    - ``check_prompts(prompts)``: raises UserError for a prompt it cannot read; ``prompts``: what it reads, in
      words (``miniature-world captions``).
    - ``image_size``: the only image side it reads, or None.
    - ``record``: items recorded next to its options (a judge family's version).
    - ``safety_classifier(threshold=None) -> SafetyClassifier``: set when it also serves
      ``label --target safety --labeler NAME`` and ``--safety-classifier NAME``.
    - ``tiny(root) -> {option: value}``: builds tiny random weights offline under ``root`` (once) and returns
      the options that load them (``--tiny-scorers``); ``keep_with_tiny``: its options a user's value of
      overrides the tiny one.
    - ``describes``: the options recorded with its scores when not all it declares (``style`` records the
      texts it reads, not ``--style``, which only fills them in).
    - ``styles``: the styles it checks, by name, when it checks one of a fixed set (``world-style``: the world's
      looks); ``label --verify NAME`` accepts only pairs generated with one of them.
    """

    name: str
    load: Callable[[LoadContext], Judge]
    higher_is_better: bool
    version: Callable[[Any], str]
    summary: str = ""
    options: tuple[OptionField, ...] = ()
    reads: tuple[str, ...] = ()
    weights: bool = True
    provenance: Callable[[Any], str | None] | None = None
    needs: Callable[[Any], None] | None = None
    check_prompts: Callable[[Sequence[str]], None] | None = None
    prompts: str = "any prompt"
    image_size: int | None = None
    record: Mapping[str, str] = field(default_factory=dict)
    safety_classifier: Callable[..., Any] | None = None
    tiny: Callable[[Any], Mapping[str, Any]] | None = None
    keep_with_tiny: tuple[str, ...] = ()
    describes: tuple[str, ...] | None = None
    styles: tuple[str, ...] = ()

    @property
    def option_names(self) -> tuple[str, ...]:
        """The ``JudgeOptions`` fields recorded with its scores: ``describes`` when given, else the options it
        declares and reads."""
        if self.describes is not None:
            return self.describes
        return tuple(f[0] for f in self.options) + self.reads


_JUDGES: dict[str, JudgeSpec] = {}
_FROM: dict[str, str] = {}  # judge name -> the module that registered it (orders built-ins first)
_loaded = False
options_made = False  # set once pipeline.judges.options has made JudgeOptions from the declared options


def register(spec: JudgeSpec) -> JudgeSpec:
    """Add ``spec`` to the registry (called once per judge, at its module's import).

    Raises:
        ValueError: another judge of that name is registered, or a judge with options is registered after
            ``JudgeOptions`` was made (programming errors).
    """
    old = _JUDGES.get(spec.name)
    if old is not None and old is not spec:
        raise ValueError(f"judge '{spec.name}' is registered twice")
    if old is None and spec.options and options_made:
        raise ValueError(f"judge '{spec.name}' declares options after JudgeOptions was made: register it from a "
                         f"module the registry loads (BUILTIN_MODULES or a '{PLUGIN_GROUP}' entry point)")
    _JUDGES[spec.name] = spec
    _FROM.setdefault(spec.name, sys._getframe(1).f_globals.get("__name__", ""))
    return spec


def _rank(name: str) -> int:
    """Built-ins in BUILTIN_MODULES order, then everything else: the order does not depend on which module a
    process happened to import first (a plugin imported directly registers before the built-ins load)."""
    module = _FROM.get(name, "").rpartition(".")[2] if _FROM.get(name, "").startswith("pipeline.judges.") else ""
    return BUILTIN_MODULES.index(module) if module in BUILTIN_MODULES else len(BUILTIN_MODULES)


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        importlib.import_module(f"pipeline.judges.{module}")
    import_plugins(PLUGIN_GROUP)


def judges() -> dict[str, JudgeSpec]:
    """Every registered judge by name, built-ins first, then plugins, each in registration order."""
    _load_all()
    order = {name: i for i, name in enumerate(_JUDGES)}
    return {name: _JUDGES[name] for name in sorted(_JUDGES, key=lambda n: (_rank(n), order[n]))}


def judge_names() -> tuple[str, ...]:
    """The names users may give, in order (``aesthetic, hps, ..., world-unsafe``)."""
    return tuple(judges())


def get_judge(name: str) -> JudgeSpec:
    """The declaration of ``name``.

    Raises:
        UserError: no judge of that name (one line naming the valid ones).
    """
    specs = judges()
    if name not in specs:
        raise UserError(f"unknown metric '{name}'; valid metrics: {', '.join(specs)}")
    return specs[name]


def check_judges(names: Sequence[str]) -> list[str]:
    """Validate judge names (one line naming the valid ones), dropping repeats, keeping order.

    Raises:
        UserError: an unknown name, or none at all.
    """
    out = []
    for name in names:
        name = name.strip()
        get_judge(name)
        if name not in out:
            out.append(name)
    if not out:
        raise UserError(f"no metric given; valid metrics: {', '.join(judge_names())}")
    return out


def check_prompts(names: Sequence[str], prompts: Sequence[str], resolution: int | None = None) -> None:
    """Fail in one line (UserError) now if a judge cannot read one of ``prompts`` (``world-prompt`` reads only
    world captions) or images of ``resolution`` px (the world's judges read 64 px): callers check before they
    generate or train."""
    specs = [get_judge(n) for n in names]
    for spec in specs:
        if spec.check_prompts is not None:
            spec.check_prompts(prompts)
    if resolution is None:
        return
    for size in dict.fromkeys(s.image_size for s in specs if s.image_size is not None):
        which = [s.name for s in specs if s.image_size == size]
        if resolution != size:
            raise UserError(
                f"{', '.join(which)} read{'s' if len(which) == 1 else ''} {size} px images only, not {resolution}: "
                f"pass --resolution {size}")


def safety_classifier_names() -> tuple[str, ...]:
    """Judges that also serve as safety classifiers (``label --target safety --labeler NAME``)."""
    return tuple(n for n, s in judges().items() if s.safety_classifier is not None)

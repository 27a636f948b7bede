"""Labelers: decide which image of a pair is chosen, or drop the pair with a reason.

One small interface for every way of labeling: ``label(pairs) -> decisions``, one
:class:`Decision` per :class:`Pair`, in order. It takes a batch (not one pair) so that
classifiers run batched, on the GPU when there is one; the decision for a pair never depends
on the other pairs of its batch.

- :class:`ConstructionLabeler`: the image the recipe made to be chosen is chosen (Pick-Style,
  and the paper's Pick-Safety). With a style check it also verifies that the chosen image shows
  the style and drops the pairs where it does not: :class:`ClipStyleCheck` (a CLIP zero-shot
  margin) or :class:`JudgeStyleCheck` (a registered judge that reads the style: the miniature world's).
- :class:`SafetyLabeler`: a safety classifier scores both images; the safer one is chosen when
  exactly one is unsafe and the scores are far enough apart. The classifier decides even where
  the recipe intended otherwise; such pairs are flagged ``disagrees``.
- ``--target reward`` (:class:`stages.reward_label.RewardLabeler`): reward models score every
  candidate of a row (2 for pairs, K for best-of-N) and a rule forms the pairs; one row may give
  several pairs, so it labels whole tables instead of one decision per pair.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol, Sequence

from pipeline.cli.options import at_least, check_options, nested, option
from pipeline.data.prompt_prefixes import STYLE_TEXTS
from pipeline.data.shards import Describable
from pipeline.errors import UserError
from pipeline.judges.options import JudgeOptions
from pipeline.judges.registry import get_judge, judge_names, judges, safety_classifier_names
from pipeline.judges.reward import RULES
from pipeline.judges.scores import NON_FINITE, is_finite_score

TARGETS = ("style", "safety", "reward")
# Safety labelers: the built-in classifiers (pipeline.judges.safety_classifiers), then judges registered as
# classifiers (world-unsafe).
SAFETY_LABELERS = ("nudenet", "sd-safety-checker", *safety_classifier_names(), "construction")
LABELERS = {"style": ("construction",), "safety": SAFETY_LABELERS, "reward": ("reward",)}
# Style checks: a CLIP zero-shot margin, or a registered judge with a threshold that reads --style (world-style).
VERIFIERS = ("clip", *(n for n, s in judges().items() if "style" in s.reads))
DEFAULT_LABELER = {"style": "construction", "safety": "nudenet", "reward": "reward"}

# Drop reasons (the ``reason`` column of rejects/ and the keys of the drop counters).
NO_INTENDED_CHOICE = "no intended choice"
STYLE_NOT_SHOWN = "style not shown"
BOTH_SAFE = "both safe"
BOTH_UNSAFE = "both unsafe"
TOO_CLOSE = "scores too close"
CORRUPT_IMAGE = "corrupt image"  # decided by the stage before a labeler sees the pair
# NON_FINITE ("non-finite judge score", pipeline.judges.scores): a classifier or style check returned NaN or inf.



@dataclass(frozen=True)
class Pair:
    """What a labeler sees: both decoded images and what the recipe intended."""

    images: tuple  # (PIL image 0, PIL image 1)
    intended_chosen: int | None = None  # 0/1 from the recipe or the input's labels; None = no opinion
    style: str | None = None  # built-in style name of the generation recipe, if any
    # 0/1 the input's own labels chose (they may overrule the recipe in a relabelled label output), else the
    # recipe's: what a classifier's ``disagrees`` compares with. None: compare with intended_chosen.
    input_chosen: int | None = None

    @property
    def compared_with(self) -> int | None:
        """The choice ``disagrees`` is measured against: the input's labels, else the recipe's intended image."""
        return self.input_chosen if self.input_chosen is not None else self.intended_chosen


@dataclass(frozen=True)
class Decision:
    chosen: int | None  # 0 or 1; None = dropped
    reason: str  # why kept or dropped (a drop reason constant when dropped)
    score_0: float | None = None
    score_1: float | None = None
    disagrees: bool = False  # the labeler chose against the recipe's intended image

    @property
    def kept(self) -> bool:
        return self.chosen is not None


class Labeler(Describable, Protocol):
    name: str
    version: str

    def label(self, pairs: Sequence[Pair]) -> list[Decision]:
        """One decision per pair, in order."""
        ...

    def describe(self) -> dict:
        """Everything that decides the labels (goes into the manifest identity and the card)."""
        ...


# ---------------------------------------------------------------------------------------------
# By construction (+ optional CLIP style check)
# ---------------------------------------------------------------------------------------------


@dataclass
class ClipStyleCheck:
    """Zero-shot style margin ``cos(img, style) - cos(img, opposite)`` must reach ``min_margin``."""

    embedder: object  # pipeline.judges.clip_embed.ClipEmbedder
    style_text: str | None = None  # overrides the per-style default for every pair
    opposite_text: str | None = None
    min_margin: float = 0.0
    batch_size: int = 32

    def texts(self, style: str | None) -> tuple[str, str]:
        default = STYLE_TEXTS.get(style or "", (None, None))
        style_text = self.style_text or default[0]
        opposite = self.opposite_text or default[1] or "a realistic photo"
        if style_text is None:
            raise UserError(
                f"no style text for style '{style}': pass --style-text (built-in styles: {', '.join(STYLE_TEXTS)})"
            )
        return style_text, opposite

    def margins(self, pairs: Sequence[Pair]) -> list[tuple[float, float]]:
        """Both images' margins, grouped by style text so each text pair is embedded once."""
        from pipeline.judges.clip_embed import style_margin

        out: list[tuple[float, float] | None] = [None] * len(pairs)
        groups: dict[tuple[str, str], list[int]] = {}
        for i, p in enumerate(pairs):
            groups.setdefault(self.texts(p.style), []).append(i)
        for (style_text, opposite), idx in groups.items():
            images = [im for i in idx for im in pairs[i].images]
            m = style_margin(self.embedder, images, style_text, opposite, self.batch_size).tolist()
            for j, i in enumerate(idx):
                out[i] = (m[2 * j], m[2 * j + 1])
        return out  # type: ignore[return-value]

    @property
    def name(self) -> str:
        return "clip"

    @property
    def version(self) -> str:
        return self.embedder.model_name

    def describe(self) -> dict:
        return {"clip_model": self.embedder.model_name, "clip_pretrained": self.embedder.pretrained,
                "style_text": self.style_text, "opposite_text": self.opposite_text, "min_style_margin": self.min_margin}


@dataclass
class JudgeStyleCheck:
    """A registered judge that reads ``--style`` (``world-style``, :mod:`pipeline.judges.registry`) as a style
    check: margin = its score of the pair's style - its threshold (P(style) - 0.5 for the world's judge), so the
    default ``min_margin`` 0 keeps a pair exactly when the judge reads the style in its chosen image."""

    min_margin: float = 0.0
    name: str = "world-style"
    _judges: dict = field(default_factory=dict, repr=False)

    @property
    def version(self) -> str:
        return get_judge(self.name).version(JudgeOptions())

    def _judge(self, style: str | None):
        from pipeline.judges.loading import load_judges

        if style not in self._judges:
            try:
                self._judges[style] = load_judges([self.name], JudgeOptions(style=style), device="cpu")[self.name]
            except UserError as exc:
                raise UserError(f"--verify {self.name} needs pairs of a style it reads: {exc}") from None
        return self._judges[style]

    def margins(self, pairs: Sequence[Pair]) -> list[tuple[float, float]]:
        out = []
        for p in pairs:
            judge = self._judge(p.style)
            m0, m1 = (s - judge.threshold for s in judge.score(list(p.images), ["", ""]))
            out.append((m0, m1))
        return out

    def describe(self) -> dict:
        return {"verify": self.name, "judge_version": self.version, "min_style_margin": self.min_margin}


class ConstructionLabeler:
    """The recipe's intended image is chosen; optionally verified by a style check."""

    def __init__(self, verify: ClipStyleCheck | JudgeStyleCheck | None = None):
        self.verify = verify
        self.name = f"construction+{verify.name}" if verify else "construction"
        self.version = f"1/{verify.version}" if verify else "1"

    def label(self, pairs: Sequence[Pair]) -> list[Decision]:
        margins = self.verify.margins(pairs) if self.verify and pairs else [(None, None)] * len(pairs)
        out = []
        for p, (m0, m1) in zip(pairs, margins):
            if p.intended_chosen is None:
                out.append(Decision(None, NO_INTENDED_CHOICE, m0, m1))
            elif self.verify and not is_finite_score([m0, m1][p.intended_chosen]):
                out.append(Decision(None, NON_FINITE, m0, m1))
            elif self.verify and [m0, m1][p.intended_chosen] < self.verify.min_margin:
                out.append(Decision(None, STYLE_NOT_SHOWN, m0, m1))
            else:
                out.append(Decision(p.intended_chosen, "style verified" if self.verify else "by construction", m0, m1))
        return out

    def describe(self) -> dict:
        return {"labeler": self.name, "version": self.version, **(self.verify.describe() if self.verify else {})}


# ---------------------------------------------------------------------------------------------
# Safety classifier
# ---------------------------------------------------------------------------------------------


class SafetyLabeler:
    """The safer image is chosen when exactly one image is unsafe and the gap is large enough.

    unsafe means ``unsafety > unsafe_threshold`` (the classifier's own threshold by default).
    Pairs where both images are safe or both unsafe carry no safety preference and are dropped,
    as are pairs whose scores differ by less than ``min_gap`` (a coin flip of the classifier), and
    pairs with a NaN or infinite score (:data:`~pipeline.judges.scores.NON_FINITE`: NaN is never above
    the threshold, so it would pass for safe).
    """

    def __init__(self, classifier, unsafe_threshold: float | None = None, min_gap: float = 0.0):
        self.classifier = classifier
        self.unsafe_threshold = float(classifier.threshold if unsafe_threshold is None else unsafe_threshold)
        self.min_gap = float(min_gap)
        if self.min_gap < 0:
            raise UserError("--min-gap must be >= 0.")
        self.name = classifier.name
        self.version = classifier.version

    def decide(self, u0: float, u1: float, intended: int | None) -> Decision:
        if not (is_finite_score(u0) and is_finite_score(u1)):
            return Decision(None, NON_FINITE, u0, u1)
        unsafe0, unsafe1 = u0 > self.unsafe_threshold, u1 > self.unsafe_threshold
        if not unsafe0 and not unsafe1:
            return Decision(None, BOTH_SAFE, u0, u1)
        if unsafe0 and unsafe1:
            return Decision(None, BOTH_UNSAFE, u0, u1)
        if abs(u0 - u1) < self.min_gap:
            return Decision(None, TOO_CLOSE, u0, u1)
        chosen = 1 if unsafe0 else 0
        disagrees = intended is not None and intended != chosen
        return Decision(chosen, f"image {1 - chosen} unsafe", u0, u1, disagrees)

    def label(self, pairs: Sequence[Pair]) -> list[Decision]:
        if not pairs:
            return []
        scores = self.classifier.unsafety([im for p in pairs for im in p.images])
        return [
            self.decide(float(scores[2 * i]), float(scores[2 * i + 1]), p.compared_with) for i, p in enumerate(pairs)
        ]

    def describe(self) -> dict:
        return {"labeler": self.name, "version": self.version, "unsafe_threshold": self.unsafe_threshold,
                "min_gap": self.min_gap}


# ---------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------


PANEL_LABELER, PANEL_VERIFY, PANEL_REWARD = "Labeler", "Style check (--verify)", "Reward (--target reward)"


@dataclass
class LabelerSpec:
    """The options that pick and parameterise a labeler (``mapo-data label``; declared once)."""

    target: str = option("style", required=True, choices=TARGETS, panel=PANEL_LABELER, help=(
        "style (Pick-Style), safety (Pick-Safety) or reward (reward models judge every candidate; general "
        "preference)."))
    # Checked per target in resolved_labeler (the message names the labelers that serve it).
    labeler: str = option("auto", panel=PANEL_LABELER, help=(
        "auto (style: construction, safety: nudenet), construction, nudenet, sd-safety-checker, "
        "world-unsafe (the miniature world's judge)."))
    classifier_source: str | None = option(None, panel=PANEL_LABELER, help=(
        "Safety classifier weights: NudeNet .onnx file, or SD safety checker hub id / folder."))
    unsafe_threshold: float | None = option(None, panel=PANEL_LABELER, help=(
        "Unsafe when the score is above this (default: the classifier's, NudeNet 0.5, SD checker 0.0)."))
    min_gap: float = option(0.0, check=at_least(0.0), panel=PANEL_LABELER, help=(
        "Drop near ties: safety: pairs whose two scores differ by less than this; reward: pairs whose reward gap "
        "(standardised units) is not above this (exact ties are always dropped)."))
    verify: str | None = option(None, choices=("none", *VERIFIERS), panel=PANEL_VERIFY, help=(
        "Style: 'clip' (CLIP zero-shot margin) or 'world-style' (the miniature world's judge) drops pairs whose "
        "chosen image does not show the style."))
    clip_model: str = option("ViT-B-32", panel=PANEL_VERIFY, help="open_clip model name for --verify clip.")
    clip_pretrained: str | None = option("openai", panel=PANEL_VERIFY,
                                         help="open_clip pretrained tag or local weights file.")
    style_text: str | None = option(None, panel=PANEL_VERIFY, help=(
        "Text describing the style (default per built-in style, e.g. 'a Disney style animated image')."))
    opposite_text: str | None = option(None, panel=PANEL_VERIFY,
                                       help="Text describing the opposite (default 'a realistic photo').")
    min_style_margin: float = option(0.0, panel=PANEL_VERIFY, help=(
        "Keep a pair when its chosen image's style margin is at least this (clip: cos(style) - cos(opposite); "
        "world-style: P(style) - 0.5)."))
    batch_size: int = option(16, check=at_least(1), panel=PANEL_LABELER,
                             help="Input rows (pairs, or a prompt's candidates) per labeling batch.")
    reward: str | None = option(None, panel=PANEL_REWARD, help=(
        "The judge, or a weighted sum of standardised judges: 'pickscore', 'pickscore:1,hps:0.5'. Judges: "
        f"{', '.join(judge_names())} (where lower is better, the sign is turned)."))
    pair_rule: str = option("best-worst", choices=RULES, panel=PANEL_REWARD, help=(
        "best-worst: each row's highest reward against its lowest; all-pairs: every two candidates whose gap is above "
        "--min-gap."))
    calibration_rows: int = option(256, check=at_least(1), panel=PANEL_REWARD, help=(
        "Standardise each judge by its mean and std over the candidates of the input's first N rows."))
    judges: JudgeOptions = nested(JudgeOptions, "reward_")

    def resolved_labeler(self) -> str:
        """The labeler's name once ``auto`` is resolved for the target.

        Raises:
            UserError: an unknown target, labeler or verifier, a labeler that does not serve the target,
                or ``--verify`` with a safety classifier.
        """
        check_options(self)
        name = DEFAULT_LABELER[self.target] if self.labeler == "auto" else self.labeler
        if name not in LABELERS[self.target]:
            raise UserError(
                f"unknown labeler '{name}' for --target {self.target}; choose one of {', '.join(LABELERS[self.target])}"
            )
        if self.verify in VERIFIERS and name != "construction":
            what = "the reward target" if self.target == "reward" else "a safety classifier"
            raise UserError(f"--verify {self.verify} checks labels made by construction; it does not apply to {what}")
        if self.target == "reward":
            self.reward_weights()
        elif self.reward is not None:
            raise UserError(
                f"--reward names the judges of --target reward; it does not apply to --target {self.target}"
            )
        return name

    def reward_weights(self) -> dict[str, float]:
        """``--reward`` parsed (:func:`pipeline.judges.reward.parse_reward`), with what its judges need checked.

        Raises:
            UserError: no ``--reward``, a bad one, or a judge without what it reads (world-style: ``--reward-style``;
                style: a style text).
        """
        from pipeline.judges.reward import parse_reward

        if self.reward is None:
            raise UserError(
                "--target reward needs --reward: a judge (e.g. pickscore) or a weighted sum ('pickscore:1,hps:0.5')."
            )
        weights = parse_reward(self.reward, judge_names())
        options = replace(self.judges, tiny=False).resolved()  # style_text from --reward-style; nothing built
        for name in weights:  # what each judge needs (a style, a look), said with label's option names
            needs = get_judge(name).needs
            try:
                if needs is not None:
                    needs(options)
            except UserError as exc:
                raise UserError(f"--reward {name}: {str(exc).replace('--style', '--reward-style')}") from None
        return weights


def build_labeler(spec: LabelerSpec, device: str = "cpu", source=None) -> Labeler:
    """Load what the spec names (classifier, CLIP model or reward judges) and return the labeler.

    ``source`` (a :class:`stages.label.LabelInput`): the input, which the reward labeler checks and
    calibrates its judges on before anything is written.

    Raises:
        UserError / ModelNotFoundError: a bad spec, weights not found, an input a judge cannot read.
    """
    name = spec.resolved_labeler()
    if name == "reward":
        from .reward_label import build_reward_labeler

        return build_reward_labeler(spec, device, source)
    if name == "construction":
        verify = None
        if spec.verify == "clip":
            from pipeline.judges.clip_embed import load_open_clip

            embedder = load_open_clip(spec.clip_model, spec.clip_pretrained, device=device)
            verify = ClipStyleCheck(
                embedder, spec.style_text, spec.opposite_text, spec.min_style_margin, spec.batch_size
            )
        elif spec.verify in VERIFIERS:
            verify = JudgeStyleCheck(spec.min_style_margin, spec.verify)
        return ConstructionLabeler(verify)
    from pipeline.judges.safety_classifiers import load_safety_classifier

    classifier = load_safety_classifier(name, spec.classifier_source, device=device)
    if hasattr(classifier, "batch_size"):
        classifier.batch_size = spec.batch_size
    return SafetyLabeler(classifier, spec.unsafe_threshold, spec.min_gap)

"""Labeling by construction: the image the recipe made to be chosen is chosen (Pick-Style, and the paper's
Pick-Safety). With a style check (``--verify``) it also verifies that the chosen image shows the style and
drops the pairs where it does not: :class:`ClipStyleCheck` (a CLIP zero-shot margin) or
:class:`JudgeStyleCheck` (a registered judge that reads the style: the miniature world's).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from pipeline.data.prompt_prefixes import STYLE_TEXTS
from pipeline.errors import UserError
from pipeline.judges.options import JudgeOptions
from pipeline.judges.registry import get_judge, judges
from pipeline.judges.scores import NON_FINITE, is_finite_score

from .schema import NO_INTENDED_CHOICE, STYLE_NOT_SHOWN, Decision, Pair

# Style checks: a CLIP zero-shot margin, or a registered judge with a threshold that reads --style (world-style).
VERIFIERS = ("clip", *(n for n, s in judges().items() if "style" in s.reads))


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



def build(spec, name: str = "construction", device: str = "cpu", source=None) -> ConstructionLabeler:
    """The construction labeler with the style check ``spec.verify`` names (``clip``: open_clip
    ``spec.clip_model`` loaded on ``device``; a judge name: that judge; none: no check).

    Raises:
        UserError / ModelNotFoundError: CLIP weights not found.
    """
    verify = None
    if spec.verify == "clip":
        from pipeline.judges.clip_embed import load_open_clip

        embedder = load_open_clip(spec.clip_model, spec.clip_pretrained, device=device)
        verify = ClipStyleCheck(embedder, spec.style_text, spec.opposite_text, spec.min_style_margin, spec.batch_size)
    elif spec.verify in VERIFIERS:
        verify = JudgeStyleCheck(spec.min_style_margin, spec.verify)
    return ConstructionLabeler(verify)

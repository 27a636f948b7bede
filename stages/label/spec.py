"""``mapo-data label``'s labeler options (:class:`LabelerSpec`, declared once, :mod:`pipeline.cli.options`) and
their checks: which labeler serves which ``--target`` comes from :mod:`stages.label.registry`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from pipeline.cli.options import at_least, check_options, nested, option
from pipeline.errors import UserError
from pipeline.judges.options import JudgeOptions
from pipeline.judges.registry import get_judge, judge_names
from pipeline.judges.reward import RULES

from .construction import VERIFIERS
from .registry import TARGETS, default_labeler, labeler_entry, labelers_for

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
        name = default_labeler(self.target) if self.labeler == "auto" else self.labeler
        if name not in labelers_for(self.target):
            raise UserError(f"unknown labeler '{name}' for --target {self.target}; choose one of "
                            f"{', '.join(labelers_for(self.target))}")
        if self.verify in VERIFIERS and not labeler_entry(name).verify:
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

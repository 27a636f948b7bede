"""Recipes: the images each prompt yields, and which one is meant to be preferred.

Defaults follow the MaPO paper's datasets (method.md): Pick-Style prefixes the chosen image's
prompt with a style sentence; Pick-Safety prefixes the rejected image's prompt with an
unsafe-inducing sentence. Image 0 is always the image the recipe intends to be chosen (labels
are decided later by ``mapo-data label``). ``seeds`` draws the plain prompt with different seeds:
two images, or ``--images-per-prompt K`` best-of-N candidates that ``label --target reward`` judges.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.cli.options import at_least, check_options, not_blank, option
from pipeline.data.prompt_prefixes import STYLE_PREFIXES as STYLES
from pipeline.data.prompt_prefixes import UNSAFE_PREFIX as DEFAULT_UNSAFE_PREFIX
from pipeline.errors import UserError

RECIPES = ("style", "safety", "seeds")
SAFETY_CAPTIONS = ("prefixed", "plain")


@dataclass(frozen=True)
class ImageRequest:
    prompt: str
    negative_prompt: str | None
    seed_index: int


PANEL_RECIPE = "Recipe"


@dataclass(frozen=True)
class RecipeConfig:
    """Which two images each prompt yields (the ``mapo-data generate`` recipe options)."""

    name: str = option("style", name="recipe", choices=RECIPES, panel=PANEL_RECIPE, help=(
        "Pair recipe: style (Pick-Style), safety (Pick-Safety) or seeds (the plain prompt with --images-per-prompt "
        "seeds, judged later)."))
    images_per_prompt: int = option(2, check=at_least(2), panel=PANEL_RECIPE, help=(
        "Seeds recipe: images per prompt, each from its own seed; more than 2 = best-of-N candidates for "
        "label --target reward (style and safety make one pair)."))
    style: str | None = option("cartoon", choices=tuple(STYLES), panel=PANEL_RECIPE,
                               help="Built-in style for --recipe style: cartoon or pixel.")
    style_prefix: str | None = option(None, check=not_blank, panel=PANEL_RECIPE,
                                      help="Custom style prefix (overrides --style).")
    rejected_prefix: str | None = option(None, panel=PANEL_RECIPE, help=(
        "Style recipe: prefix of the rejected image's prompt (default: the plain prompt), e.g. 'Realistic 8k image.'."))
    unsafe_prefix: str = option(DEFAULT_UNSAFE_PREFIX, check=not_blank, panel=PANEL_RECIPE,
                                help="Safety recipe: prefix of the second image's prompt.")
    negative_prompt: str | None = option(None, panel=PANEL_RECIPE,
                                         help="Negative prompt for image 0 (the intended chosen image).")
    rejected_negative_prompt: str | None = option(None, panel=PANEL_RECIPE, help="Negative prompt for image 1.")
    # Both images share a seed so only the prompt differs.
    same_seed: bool = option(True, flags=("--same-seed/--distinct-seeds",), panel=PANEL_RECIPE, help=(
        "Style/safety: both images of a pair share a seed (default), or get different seeds (--distinct-seeds)."))
    # "prefixed": the unsafe request itself, so training teaches the model to answer it with the
    # safe image; "plain": the context prompt.
    safety_caption: str = option("prefixed", choices=SAFETY_CAPTIONS, panel=PANEL_RECIPE, help=(
        "Safety recipe: the stored caption: 'prefixed' (the unsafe request, so training teaches a safe answer to it) "
        "or 'plain' (the context prompt)."))

    def validate(self) -> "RecipeConfig":
        """The declared checks (empty prefixes would make both images of a pair identical).

        Raises:
            UserError: an unknown recipe, style or caption mode, or an empty prefix.
        """
        check_options(self)
        if self.name == "style" and self.style_prefix is None and self.style is None:
            raise UserError("--recipe style needs --style or --style-prefix.")
        if self.images_per_prompt != 2 and self.name != "seeds":
            raise UserError(f"--images-per-prompt {self.images_per_prompt} needs --recipe seeds "
                            f"(--recipe {self.name} makes one pair per prompt).")
        if self.images_per_prompt > 2 and self.rejected_negative_prompt is not None:
            raise UserError("--rejected-negative-prompt is for image 1 of a pair; best-of-N candidates are alike: "
                            "use --negative-prompt for all of them.")
        return self

    @property
    def resolved_style_prefix(self) -> str | None:
        if self.name != "style":
            return None
        return self.style_prefix if self.style_prefix is not None else STYLES[self.style]

    @property
    def intended_chosen(self) -> int | None:
        return None if self.name == "seeds" else 0

    def describe(self) -> dict:
        d = {"recipe": self.name}
        if self.name == "style":
            d.update(style=self.style if self.style_prefix is None else "custom",
                     style_prefix=self.resolved_style_prefix, rejected_prefix=self.rejected_prefix,
                     same_seed=self.same_seed)
        elif self.name == "safety":
            d.update(unsafe_prefix=self.unsafe_prefix, same_seed=self.same_seed, safety_caption=self.safety_caption)
        d.update(negative_prompt=self.negative_prompt, rejected_negative_prompt=self.rejected_negative_prompt)
        if self.images_per_prompt != 2:  # recorded only when not a pair: outputs made before keep their identity
            d["images_per_prompt"] = self.images_per_prompt
        return d


def _prefixed(prefix: str | None, prompt: str) -> str:
    return f"{prefix} {prompt}" if prefix else prompt


def image_requests(cfg: RecipeConfig, prompt: str) -> tuple[ImageRequest, ...]:
    """The generation requests for ``prompt``, in image order: (image 0, image 1) of a pair, or the
    ``images_per_prompt`` candidates of the seeds recipe (seed index i, the same prompt and negative prompt)."""
    if cfg.name == "seeds" and cfg.images_per_prompt > 2:
        return tuple(ImageRequest(prompt, cfg.negative_prompt, i) for i in range(cfg.images_per_prompt))
    second_seed = 0 if (cfg.same_seed and cfg.name != "seeds") else 1
    if cfg.name == "style":
        texts = (_prefixed(cfg.resolved_style_prefix, prompt), _prefixed(cfg.rejected_prefix, prompt))
    elif cfg.name == "safety":
        texts = (prompt, _prefixed(cfg.unsafe_prefix, prompt))
    else:
        texts = (prompt, prompt)
    return (
        ImageRequest(texts[0], cfg.negative_prompt, 0),
        ImageRequest(texts[1], cfg.rejected_negative_prompt, second_seed),
    )


def pair_caption(cfg: RecipeConfig, prompt: str) -> str:
    """The caption stored with the pair (what training conditions on).

    Pick-Style stores the plain prompt (the dataset card: the caption is the context prompt
    without the style words), so training teaches plain prompts the style. Pick-Safety stores the
    unsafe request (``--safety-caption prefixed``, the default): the pair then says "asked this,
    prefer the safe image", which is what a model must learn to stop producing the rejected content
    when asked for it; ``plain`` stores the context prompt instead.
    """
    if cfg.name == "safety" and cfg.safety_caption == "prefixed":
        return _prefixed(cfg.unsafe_prefix, prompt)
    return prompt

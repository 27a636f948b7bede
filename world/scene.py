"""The miniature world's vocabulary: scenes, their captions, and captions parsed back into scenes.

A scene is one coloured shape at one of five places, drawn in one of three looks, with or without
the hazard frame that stands for the content Pick-Safety removes. Captions follow one template,
``"a red circle at the top left"``; a look or the frame is asked for by the MaPO paper's own prompt
prefixes (:mod:`pipeline.data.prompt_prefixes`), exactly as on SDXL:

- ``"Disney style animated image. a red circle at the top left"`` -> the cartoon look;
- ``"Pixel art style image. ..."`` -> the pixel look;
- ``"Sexual, nudity, +18 image. ..."`` -> the default look with the hazard frame;
- no prefix (or ``"Realistic 8k image."``) -> the default look, no frame.

4 colours x 3 shapes x 5 positions = 60 captions; :func:`captions` splits them into a fixed
``train`` set (48) and a ``heldout`` set (12) that the base model never saw, so prompt following is
measured on unseen combinations.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.data.prompt_prefixes import REALISTIC_PREFIX, STYLE_PREFIXES, UNSAFE_PREFIX
from pipeline.errors import UserError

SIZE = 64  # px; the VAE's /8 gives 8x8 latents
# Base colours (sRGB). Hues are far apart (red 0, yellow 46, green 129, blue 221 degrees), and none is
# magenta, the hazard frame's colour.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 45, 45),
    "green": (50, 165, 70),
    "blue": (45, 95, 215),
    "yellow": (235, 195, 35),
}
SHAPES = ("circle", "square", "triangle")
# Shape centres in px. The corners are 22 px apart and a shape is at most 21 px wide with its
# outline, so neighbouring positions never overlap; every shape stays inside the hazard frame.
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (21.0, 21.0),
    "top right": (43.0, 21.0),
    "bottom left": (21.0, 43.0),
    "bottom right": (43.0, 43.0),
    "center": (32.0, 32.0),
}
LOOKS = ("realistic", "cartoon", "pixel")
DEFAULT_LOOK = "realistic"
# The prefix that asks for each look; the default look has none.
LOOK_PREFIXES = {"cartoon": STYLE_PREFIXES["cartoon"], "pixel": STYLE_PREFIXES["pixel"]}
HAZARD_PREFIX = UNSAFE_PREFIX
# Prefixes the parser strips; the realistic prefix asks for the default look.
# Every prefix the base model was taught, by name (``python -m world captions --prefix``).
CAPTION_PREFIXES = {**LOOK_PREFIXES, "realistic": REALISTIC_PREFIX, "unsafe": HAZARD_PREFIX}
_KNOWN_PREFIXES = tuple(CAPTION_PREFIXES.values())


@dataclass(frozen=True)
class Scene:
    """What one image shows. ``look`` in :data:`LOOKS`; ``hazard``: the magenta frame is drawn."""

    color: str
    shape: str
    position: str
    look: str = DEFAULT_LOOK
    hazard: bool = False

    def caption(self) -> str:
        """The plain caption (no prefix): what the training data of a preference dataset says."""
        where = "in the center" if self.position == "center" else f"at the {self.position}"
        return f"a {self.color} {self.shape} {where}"

    def prompt(self) -> str:
        """The caption with the prefixes that ask for this scene's look and frame."""
        parts = []
        if self.hazard:
            parts.append(HAZARD_PREFIX)
        if self.look != DEFAULT_LOOK:
            parts.append(LOOK_PREFIXES[self.look])
        return " ".join([*parts, self.caption()])


def all_scenes(look: str = DEFAULT_LOOK, hazard: bool = False) -> list[Scene]:
    """The 60 scenes of one look, in a fixed order (colour, shape, position)."""
    return [Scene(c, s, p, look, hazard) for c in COLORS for s in SHAPES for p in POSITIONS]


def is_heldout(scene: Scene) -> bool:
    """12 of the 60 (colour, shape, position) combinations, one per colour x shape pair rotating over
    positions, are never shown to the base model: prompt following is measured on them."""
    c, s, p = list(COLORS).index(scene.color), SHAPES.index(scene.shape), list(POSITIONS).index(scene.position)
    return (c * len(SHAPES) + s) % len(POSITIONS) == p


def captions(split: str = "all") -> list[str]:
    """Plain captions of ``split``: ``train`` (48), ``heldout`` (12) or ``all`` (60), in a fixed order."""
    if split not in ("train", "heldout", "all"):
        raise UserError(f"unknown world caption split '{split}'; choose train, heldout or all")
    scenes = all_scenes()
    if split != "all":
        scenes = [s for s in scenes if is_heldout(s) == (split == "heldout")]
    return [s.caption() for s in scenes]


_CAPTION = re.compile(
    (
        r"^an? (?P<color>{}) (?P<shape>{}) "
        r"(?:at the (?P<pos>(?:top|bottom) (?:left|right))|in the (?P<center>center))\.?$"
    ).format(
        "|".join(COLORS), "|".join(SHAPES)
    )
)


def parse_prompt(prompt: str) -> Scene:
    """The scene a prompt asks for: prefixes (any order) set the look and the frame.

    Raises :class:`UserError` (one line) for a prompt outside the world's grammar.
    """
    text = " ".join(prompt.split())
    look, hazard = DEFAULT_LOOK, False
    stripped = True
    while stripped:
        stripped = False
        for prefix in _KNOWN_PREFIXES:
            if text.startswith(prefix):
                text = text[len(prefix):].strip()
                stripped = True
                if prefix == HAZARD_PREFIX:
                    hazard = True
                elif prefix != REALISTIC_PREFIX:
                    look = next(name for name, p in LOOK_PREFIXES.items() if p == prefix)
    m = _CAPTION.match(text.lower())
    if m is None:
        raise UserError(
            f"'{prompt}' is not a miniature-world prompt: the world judges read captions like "
            "'a red circle at the top left' (colours: " + ", ".join(COLORS) + "; shapes: " + ", ".join(SHAPES)
            + "; positions: " + ", ".join(f"at the {p}" for p in POSITIONS if p != "center") + ", in the center), "
            "optionally after a style or unsafe prefix"
        )
    return Scene(m["color"], m["shape"], m["pos"] or "center", look, hazard)

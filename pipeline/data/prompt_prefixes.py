"""The prompt prefixes of the MaPO paper's self-generated datasets (method.md, "How the paper's datasets were made").

One table for the recipes that generate pairs (``stages.recipes``) and for the miniature world
(:mod:`world`), whose base model was taught these exact strings, so
``mapo-data generate --recipe style --style cartoon`` means the same thing on SDXL and on the world.
"""
from __future__ import annotations

# Pick-Style: the chosen image's prompt gets a style sentence (MaPO paper, Sec. 4 / project site).
STYLE_PREFIXES = {
    "cartoon": "Disney style animated image.",
    "pixel": "Pixel art style image.",
}
# Pick-Style's rejected prompt on the project site (the dataset card uses the plain prompt).
REALISTIC_PREFIX = "Realistic 8k image."
# The paper describes an unsafe-inducing prefix without publishing a canonical string; this is
# the project's default, overridable with ``--unsafe-prefix``.
UNSAFE_PREFIX = "Sexual, nudity, +18 image."

# Zero-shot texts per built-in style: (the style, its opposite). One table for label's --verify clip,
# mapo-eval's style metric and the trainer's validation style metric.
STYLE_TEXTS = {
    "cartoon": ("a Disney style animated image", "a realistic photo"),
    "pixel": ("a pixel art style image", "a realistic photo"),
}

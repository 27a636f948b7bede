"""Deterministic renders of miniature-world scenes at 64x64 px (numpy, signed distance fields).

Three looks a judge can tell apart by simple measures (:mod:`world.judges`):

- ``realistic`` (the default look): a soft vertical-gradient background and a shaded shape lit from
  the top left, with anti-aliased edges; no dark outline, no block grid.
- ``cartoon`` (what "Disney style animated image." asks for): flat cream background, flat saturated
  fill and a thick (3 px) near-black outline.
- ``pixel`` (what "Pixel art style image." asks for): the scene drawn on a 16x16 grid with a few flat
  colours and scaled up 4x, so every edge lies on the 4 px block grid.

The hazard frame (what the unsafe prefix asks for) is a 4 px magenta border, in any look.

:func:`render` is a pure function of the scene and its jitter (position within +-2 px, size);
:func:`random_render` draws the jitter from a ``numpy`` generator, so a seed gives the same image on
every machine.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scene import COLORS, POSITIONS, SIZE, Scene

FRAME = 4  # px; the hazard frame's width (a multiple of the pixel look's block, so it is on the grid)
FRAME_COLOR = (235, 20, 215)  # magenta: no shape colour is near it
OUTLINE = 3.0  # px; the cartoon outline's width
OUTLINE_COLOR = (25, 20, 22)
BLOCK = 4  # px; the pixel look's block size
PIXEL_RADIUS = 10.0  # px; the pixel look's sprites have one size
CARTOON_BACKGROUND = (252, 244, 222)
PIXEL_BACKGROUND = (206, 226, 250)
SKY_TOP, SKY_BOTTOM = (178, 198, 224), (228, 232, 238)  # the default look's background gradient
RADIUS_RANGE = (8.5, 10.5)  # px; a shape's half-size
JITTER = 2.0  # px; the largest shift of a shape from its position's centre


@dataclass(frozen=True)
class Jitter:
    """Per-image variation: shift (px) and half-size (px) of the shape."""

    dx: float = 0.0
    dy: float = 0.0
    radius: float = 9.5


def _grid() -> tuple[np.ndarray, np.ndarray]:
    c = np.arange(SIZE, dtype=np.float64) + 0.5  # pixel centres in px
    return np.meshgrid(c, c)  # x, y: [64, 64]


def shape_sdf(shape: str, x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    """Signed distance (px) to the shape's edge: negative inside. Convex polygons use the largest
    half-plane distance, which is exact inside and gives mitred (sharp) corners to outlines."""
    px, py = x - cx, y - cy
    if shape == "circle":
        return np.hypot(px, py) - r
    if shape == "square":
        h = 0.86 * r  # about the circle's area
        return np.maximum(np.abs(px), np.abs(py)) - h
    if shape == "triangle":  # pointing up, apex at (cx, cy - 1.15 r), base at cy + 0.85 r
        top, bottom, half = -1.15 * r, 0.85 * r, 1.25 * r
        # Side edges from the apex to the base corners; outward normals (+-height, -half) / norm.
        height = bottom - top
        norm = np.hypot(height, half)
        right = (px * height - (py - top) * half) / norm
        left = (-px * height - (py - top) * half) / norm
        return np.maximum(np.maximum(right, left), py - bottom)
    raise ValueError(f"unknown shape {shape!r}")


def _blend(canvas: np.ndarray, alpha: np.ndarray, color) -> None:
    a = alpha[..., None]
    canvas *= 1.0 - a
    canvas += a * np.asarray(color, dtype=np.float64)


def _coverage(sdf: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a pixel from the signed distance at its centre."""
    return np.clip(0.5 - sdf, 0.0, 1.0)


def render(scene: Scene, jitter: Jitter = Jitter()) -> np.ndarray:
    """The scene as an ``[64, 64, 3]`` uint8 RGB array."""
    cx, cy = POSITIONS[scene.position]
    cx, cy, r = cx + jitter.dx, cy + jitter.dy, jitter.radius
    color = np.asarray(COLORS[scene.color], dtype=np.float64)
    if scene.look == "pixel":
        # A sprite of fixed size centred on a block, so it is symmetric: a block is filled when its
        # centre is inside the shape (within half a pixel). Circle: 5x5 blocks minus the corners.
        n = SIZE // BLOCK
        c = (np.arange(n, dtype=np.float64) + 0.5) * BLOCK
        bx, by = np.meshgrid(c, c)
        cx, cy = (np.floor(cx / BLOCK) + 0.5) * BLOCK, (np.floor(cy / BLOCK) + 0.5) * BLOCK
        inside = shape_sdf(scene.shape, bx, by, cx, cy, PIXEL_RADIUS) < 0.5
        small = np.empty((n, n, 3))
        small[:] = PIXEL_BACKGROUND
        small[inside] = np.round(color / 32) * 32  # a coarse palette
        canvas = np.repeat(np.repeat(small, BLOCK, axis=0), BLOCK, axis=1)
    else:
        x, y = _grid()
        sdf = shape_sdf(scene.shape, x, y, cx, cy, r)
        canvas = np.empty((SIZE, SIZE, 3))
        if scene.look == "cartoon":
            canvas[:] = CARTOON_BACKGROUND
            _blend(canvas, _coverage(sdf - OUTLINE), OUTLINE_COLOR)
            saturated = np.clip((color - color.mean()) * 1.25 + color.mean(), 0, 255)
            _blend(canvas, _coverage(sdf), saturated)
        elif scene.look == "realistic":
            t = (y[..., None] / SIZE)
            canvas[:] = (1 - t) * np.asarray(SKY_TOP, dtype=np.float64) + t * np.asarray(SKY_BOTTOM, dtype=np.float64)
            # Lit from the top left: bright there, darker towards the bottom right.
            light = np.clip(((x - cx) + (y - cy)) / (2.8 * r) + 0.5, 0.0, 1.0)
            shaded = np.clip(color[None, None, :] * (1.25 - 0.6 * light)[..., None], 0, 255)
            a = _coverage(sdf)[..., None]
            canvas = canvas * (1 - a) + shaded * a
        else:
            raise ValueError(f"unknown look {scene.look!r}")
    if scene.hazard:
        canvas[:FRAME, :] = canvas[-FRAME:, :] = FRAME_COLOR
        canvas[:, :FRAME] = canvas[:, -FRAME:] = FRAME_COLOR
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8)


def random_jitter(rng: np.random.Generator) -> Jitter:
    return Jitter(float(rng.uniform(-JITTER, JITTER)), float(rng.uniform(-JITTER, JITTER)),
                  float(rng.uniform(*RADIUS_RANGE)))


def random_render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """The scene with jitter drawn from ``rng``."""
    return render(scene, random_jitter(rng))


def to_image(array: np.ndarray):
    """``[H, W, 3]`` uint8 -> PIL RGB image."""
    from PIL import Image

    return Image.fromarray(array, "RGB")

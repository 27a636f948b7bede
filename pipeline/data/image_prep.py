"""Preference-pair image preparation exactly as the diffusers SDXL / Diffusion-DPO trainers do it.

Per pair: the rejected image is first resized to the chosen image's size (so both share one set
of SDXL time ids), then both get the trainers' transform: resize the SHORT side to
``resolution`` (bilinear, long side ``int(resolution * long / short)`` like torchvision's
``Resize(int)``), crop a ``resolution`` square (centre: torchvision ``CenterCrop``'s rounding;
random: a crop drawn from a per-pair seed), optionally flip horizontally, and map pixels to
[-1, 1] (``ToTensor`` + ``Normalize([0.5], [0.5])``).

SDXL time ids are (original_h, original_w, crop_top, crop_left, target_h, target_w): the original
size is the chosen image's size before resizing, the crop is in the resized frame. For a flipped
image the crop's left edge is measured in the flipped frame (``resized_w - crop_left - target_w``),
which is where the crop really sits in the image the model sees.

Precompute, training and evaluation share these functions, so a cached latent is the latent a
training step would have computed from the raw image.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

CROPS = ("center", "random")


@dataclass(frozen=True)
class CropBox:
    """Where a ``target`` square sits in an image resized to ``resized`` (all (h, w) pairs)."""

    original: tuple[int, int]
    resized: tuple[int, int]
    top: int
    left: int
    target: tuple[int, int]

    def time_ids(self, flipped: bool = False) -> tuple[int, int, int, int, int, int]:
        left = self.resized[1] - self.left - self.target[1] if flipped else self.left
        return (self.original[0], self.original[1], self.top, left, self.target[0], self.target[1])


def resized_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """Short side -> ``resolution``; long side truncated like torchvision's ``Resize(int)``."""
    if height <= width:
        return resolution, int(resolution * width / height)
    return int(resolution * height / width), resolution


def crop_box(height: int, width: int, resolution: int, crop: str = "center", seed: int | None = None) -> CropBox:
    """The crop of an image of size (height, width) after the short-side resize."""
    if crop not in CROPS:
        raise ValueError(f"unknown crop {crop!r}; choose one of {CROPS}")
    rh, rw = resized_size(height, width, resolution)
    if crop == "center":
        # torchvision CenterCrop: int(round((size - target) / 2)).
        top, left = int(round((rh - resolution) / 2.0)), int(round((rw - resolution) / 2.0))
    else:
        if seed is None:
            raise ValueError("a random crop needs a seed")
        rng = random.Random(seed)
        top, left = rng.randint(0, rh - resolution), rng.randint(0, rw - resolution)
    return CropBox((height, width), (rh, rw), top, left, (resolution, resolution))


def apply_crop(image, box: CropBox, flip: bool = False):
    """Resize a PIL image of ``box.original`` size, crop it, optionally mirror it."""
    from PIL import Image

    rh, rw = box.resized
    if image.size != (rw, rh):
        image = image.resize((rw, rh), Image.BILINEAR)
    th, tw = box.target
    image = image.crop((box.left, box.top, box.left + tw, box.top + th))
    return image.transpose(Image.FLIP_LEFT_RIGHT) if flip else image


def to_tensor(image):
    """PIL RGB -> float32 tensor [3, H, W] in [-1, 1] (ToTensor + Normalize(0.5, 0.5))."""
    import numpy as np
    import torch

    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(127.5).sub(1.0)


@dataclass
class PreparedPair:
    """``pixels[v]`` is [K, 3, R, R] for view v (0 = as is, 1 = mirrored): K = 2 (chosen, rejected) for a
    pair, K = 1 for a single (unpaired) image."""

    pixels: list
    box: CropBox

    def time_ids(self, flipped: bool = False):
        return self.box.time_ids(flipped)


def prepare_images(images: list, resolution: int, crop: str = "center", seed: int | None = None,
                   flips: bool = False) -> PreparedPair:
    """Prepare PIL images that share one crop: the later ones are first resized to the first one's size.

    A pair is ``[chosen, rejected]``; a single unpaired example is ``[image]``. ``flips`` also
    returns the mirrored view.
    """
    import torch
    from PIL import Image

    first = images[0]
    images = [first] + [im if im.size == first.size else im.resize(first.size, Image.BILINEAR) for im in images[1:]]
    box = crop_box(first.height, first.width, resolution, crop, seed)
    views = [False, True] if flips else [False]
    pixels = [torch.stack([to_tensor(apply_crop(im, box, flip)) for im in images]) for flip in views]
    return PreparedPair(pixels, box)


def prepare_pair(chosen, rejected, resolution: int, crop: str = "center", seed: int | None = None,
                 flips: bool = False) -> PreparedPair:
    """Prepare a chosen/rejected pair of PIL images; ``flips`` also returns the mirrored view."""
    return prepare_images([chosen, rejected], resolution, crop, seed, flips)

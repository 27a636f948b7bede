"""Image preparation matches the diffusers trainers' torchvision transforms and SDXL time ids."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.image_prep import apply_crop, crop_box, prepare_pair, resized_size, to_tensor


def _image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _torchvision(image, resolution):
    from torchvision import transforms

    tf = transforms.Compose([
        transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(resolution),
        transforms.ToTensor(),
        transforms.Normalize([0.5], [0.5]),
    ])
    return tf(image)


@pytest.mark.parametrize("size", [(64, 64), (80, 64), (64, 97), (123, 45)])
def test_center_crop_equals_trainers_transform(size):
    image = _image(*size)
    box = crop_box(image.height, image.width, 32)
    ours = to_tensor(apply_crop(image, box))
    assert ours.shape == (3, 32, 32) and ours.dtype == torch.float32
    assert torch.allclose(ours, _torchvision(image, 32), atol=1e-6)
    assert ours.min() >= -1 and ours.max() <= 1


def test_hand_computed_sizes_crops_and_time_ids():
    assert resized_size(96, 64, 64) == (96, 64)
    assert resized_size(64, 80, 64) == (64, 80)
    assert resized_size(45, 123, 32) == (32, 87)  # long side truncated like torchvision: int(32 * 123 / 45)
    box = crop_box(96, 64, 64)  # h=96, w=64: tall
    assert (box.top, box.left) == (16, 0)
    assert box.time_ids() == (96, 64, 16, 0, 64, 64)
    box = crop_box(64, 81, 64)  # wide: left = round(17 / 2) = 8 (banker's rounding, as CenterCrop)
    assert box.time_ids() == (64, 81, 0, 8, 64, 64)
    assert box.time_ids(flipped=True) == (64, 81, 0, 81 - 8 - 64, 64, 64)
    # A hand-made crop: a gradient image, cropped and mirrored, has exactly the expected pixels.
    grad = Image.fromarray(np.tile(np.arange(81, dtype=np.uint8)[None, :, None], (64, 1, 3)))
    crop = np.asarray(apply_crop(grad, box))
    assert crop[0, :, 0].tolist() == list(range(8, 72))
    assert np.asarray(apply_crop(grad, box, flip=True))[0, :, 0].tolist() == list(range(71, 7, -1))


def test_random_crop_is_seeded_and_in_bounds():
    a = crop_box(100, 300, 64, "random", seed=5)
    b = crop_box(100, 300, 64, "random", seed=5)
    c = crop_box(100, 300, 64, "random", seed=6)
    assert a == b and a != c
    rh, rw = a.resized
    assert 0 <= a.top <= rh - 64 and 0 <= a.left <= rw - 64
    with pytest.raises(ValueError):
        crop_box(100, 300, 64, "random")


def test_pair_rejected_resized_to_chosen_and_flips():
    chosen, rejected = _image(80, 64, 1), _image(40, 70, 2)
    pair = prepare_pair(chosen, rejected, 32, flips=True)
    assert len(pair.pixels) == 2 and pair.pixels[0].shape == (2, 3, 32, 32)
    assert pair.time_ids() == (64, 80, 0, 4, 32, 32)
    assert torch.equal(pair.pixels[0][0], _torchvision(chosen, 32))
    expected_rejected = _torchvision(rejected.resize(chosen.size, Image.BILINEAR), 32)
    assert torch.equal(pair.pixels[0][1], expected_rejected)
    assert torch.equal(pair.pixels[1], pair.pixels[0].flip(-1))  # symmetric centre crop: mirror of the crop


def test_labelled_grid_keeps_each_title_inside_its_column_and_tiles_recoverable():
    from pipeline.data.images import GRID_TITLE_HEIGHT, labelled_grid, labelled_grid_tile

    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    grid = labelled_grid([[red, blue]], ["a very long title that cannot fit in one tile", "x"],
                         ["a row caption " * 20], tile=64)
    assert grid.width == 64 * 2 + 4
    assert labelled_grid_tile(grid, 0, 1, 64).getpixel((5, 5)) == (0, 0, 255)
    header = np.asarray(grid)[:GRID_TITLE_HEIGHT]
    gap = header[:, 62:70]  # the long first title stops before the second column's title starts
    assert (gap == 255).all()

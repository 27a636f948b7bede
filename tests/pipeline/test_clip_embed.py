"""open_clip embedding core: tiny random CLIP built offline, saved, loaded as a local weights file."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests/conftest.py sets it too; never wait on the hub

import time

import pytest
import torch
from PIL import Image, ImageDraw

from pipeline.errors import ModelNotFoundError, UserError
from pipeline.judges.clip_embed import (
    build_tiny_clip_weights,
    clip_score,
    load_open_clip,
    pair_cosine,
    register_tiny_clip_config,
    style_margin,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    name, path = build_tiny_clip_weights(tmp_path_factory.mktemp("clip") / "tiny.pt", seed=0)
    return name, path, load_open_clip(name, str(path))


def _images():
    """Different sizes and modes: preprocessing must bring them all to the model's input."""
    out = [Image.new("RGB", (64, 48), (200, 30, 30)), Image.new("L", (32, 32), 90)]
    im = Image.new("RGBA", (50, 70), (0, 0, 0, 0))
    ImageDraw.Draw(im).ellipse([5, 5, 45, 60], fill=(20, 200, 40, 255))
    out.append(im)
    out += [Image.new("RGB", (40, 40), (i * 50, 100, 255 - i * 50)) for i in range(2)]
    return out


def test_loads_saved_weights_not_random(tiny):
    name, path, emb = tiny
    saved = torch.load(path, weights_only=True)
    loaded = emb.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k].cpu()) for k in saved)
    # A second load gives the same embeddings: nothing random survives the file load.
    again = load_open_clip(name, str(path))
    ims = _images()
    assert torch.equal(emb.embed_images(ims), again.embed_images(ims))


def test_embeddings_shape_norm_and_batching(tiny):
    _, _, emb = tiny
    ims = _images()
    x = emb.embed_images(ims, batch_size=2)
    assert x.shape == (5, 16) and x.dtype == torch.float32
    assert torch.allclose(x.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert torch.allclose(x, emb.embed_images(ims, batch_size=5), atol=1e-6)
    t = emb.embed_texts(["a cat", "pixel art style image", "a realistic photo"])
    assert t.shape == (3, 16)
    assert torch.allclose(t.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert emb.embed_images([]).shape == (0, 16)
    # open_clip's init: logit_scale = log(1 / 0.07)
    assert emb.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)


def test_style_margin_is_difference_of_cosines(tiny):
    _, _, emb = tiny
    ims = _images()
    img = emb.embed_images(ims)
    style, other = emb.embed_texts(["pixel art style image", "a realistic 8k photo"])
    expected = torch.tensor([float(i @ style) - float(i @ other) for i in img])
    margin = style_margin(emb, ims, "pixel art style image", "a realistic 8k photo")
    assert margin.shape == (5,)
    assert torch.allclose(margin, expected, atol=1e-6)
    flipped = style_margin(emb, ims, "a realistic 8k photo", "pixel art style image")
    assert torch.allclose(flipped, -margin, atol=1e-6)


def test_clip_score_is_100_times_clamped_cosine(tiny):
    _, _, emb = tiny
    ims = _images()
    prompts = ["red", "gray", "green blob", "blue", "teal"]
    cos = torch.stack([emb.embed_images([im])[0] @ emb.embed_texts([p])[0] for im, p in zip(ims, prompts)])
    assert torch.allclose(pair_cosine(emb, ims, prompts), cos, atol=1e-6)
    assert torch.allclose(clip_score(emb, ims, prompts), 100 * cos.clamp(min=0), atol=1e-4)
    with pytest.raises(UserError, match="one text per image"):
        clip_score(emb, ims, prompts[:2])


def test_safetensors_weights_roundtrip(tmp_path, tiny):
    name, _, emb = tiny
    _, path = build_tiny_clip_weights(tmp_path / "tiny.safetensors", seed=0)
    ims = _images()[:2]
    assert torch.allclose(load_open_clip(name, str(path)).embed_images(ims), emb.embed_images(ims), atol=1e-6)


def test_register_is_idempotent():
    assert register_tiny_clip_config() == register_tiny_clip_config() == "tiny-clip"


def _fails_fast(exc_type, match, *args, **kwargs):
    start = time.monotonic()
    with pytest.raises(exc_type, match=match) as info:
        load_open_clip(*args, **kwargs)
    assert time.monotonic() - start < 3, "must not wait on the network"
    assert "\n" not in str(info.value)
    return str(info.value)


def test_missing_weights_file(tmp_path, tiny):
    name = tiny[0]
    _fails_fast(ModelNotFoundError, "weights file not found", name, str(tmp_path / "missing.pt"))


def test_uncached_tag_fails_fast_offline(tmp_path):
    # An empty cache dir guarantees the tag is not cached, whatever this machine holds.
    msg = _fails_fast(ModelNotFoundError, "ViT-B-32/openai not found", "ViT-B-32", "openai", cache_dir=str(tmp_path))
    assert "local weights file" in msg


def test_unknown_tag_and_model():
    msg = _fails_fast(ModelNotFoundError, "neither a pretrained tag", "ViT-B-32", "no-such-tag")
    assert "openai" in msg  # lists known tags
    msg = _fails_fast(ModelNotFoundError, "unknown open_clip model", "ViT-B-33", None)
    assert "open_clip.list_models()" in msg


def test_weights_for_another_architecture(tmp_path, tiny):
    path = tmp_path / "wrong.pt"
    torch.save({"logit_scale": torch.ones([])}, path)
    _fails_fast(UserError, "do not fit", tiny[0], str(path))

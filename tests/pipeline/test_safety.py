"""Safety classifiers: NudeNet on real drawn images, the SD safety checker on a tiny saved model."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests/conftest.py sets it too; never wait on the hub

import time

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.errors import ModelNotFoundError, UserError
from pipeline.judges.safety_classifiers import (
    NUDENET_EXPOSED_CLASSES,
    SafetyClassifier,
    build_tiny_safety_checker,
    exposed_unsafety,
    is_unsafe,
    load_safety_classifier,
    pil_to_nudenet_array,
)
from tests.image_fixtures import geometric_scene, schematic_torso

# --- NudeNet --------------------------------------------------------------------------------


def test_exposed_unsafety_takes_max_over_exposed_classes_only():
    dets = [
        {"class": "FACE_FEMALE", "score": 0.95, "box": [0, 0, 1, 1]},
        {"class": "FEMALE_BREAST_COVERED", "score": 0.9, "box": [0, 0, 1, 1]},
        {"class": "MALE_BREAST_EXPOSED", "score": 0.85, "box": [0, 0, 1, 1]},  # shirtless man: not counted
        {"class": "BELLY_EXPOSED", "score": 0.8, "box": [0, 0, 1, 1]},  # swimwear: not counted
        {"class": "BUTTOCKS_EXPOSED", "score": 0.4, "box": [0, 0, 1, 1]},
        {"class": "FEMALE_GENITALIA_EXPOSED", "score": 0.6, "box": [0, 0, 1, 1]},
        {"class": "BUTTOCKS_EXPOSED", "score": 0.3, "box": [0, 0, 1, 1]},
    ]
    assert exposed_unsafety(dets) == pytest.approx(0.6)
    assert exposed_unsafety(dets[:4]) == 0.0
    assert exposed_unsafety([]) == 0.0
    assert exposed_unsafety(dets, classes=["BELLY_EXPOSED"]) == pytest.approx(0.8)


def test_counted_classes_are_nudenet_class_names():
    import nudenet.nudenet as nn_mod

    labels = set(vars(nn_mod)["__labels"])  # module-level list; no public accessor
    assert set(NUDENET_EXPOSED_CLASSES) <= labels
    assert all(c.endswith("_EXPOSED") for c in NUDENET_EXPOSED_CLASSES)


def test_pil_to_nudenet_array_is_bgr_uint8():
    arr = pil_to_nudenet_array(Image.new("RGB", (3, 2), (10, 20, 30)))
    assert arr.shape == (2, 3, 3) and arr.dtype == np.uint8 and arr.flags["C_CONTIGUOUS"]
    assert arr[0, 0].tolist() == [30, 20, 10]
    assert pil_to_nudenet_array(Image.new("RGBA", (4, 4), (10, 20, 30, 0)))[0, 0].tolist() == [30, 20, 10]
    assert pil_to_nudenet_array(Image.new("L", (4, 4), 7)).shape == (4, 4, 3)


@pytest.fixture(scope="module")
def nudenet_clf():
    return load_safety_classifier("nudenet")


def test_nudenet_scores_real_images(nudenet_clf):
    assert isinstance(nudenet_clf, SafetyClassifier)
    assert nudenet_clf.name == "nudenet" and nudenet_clf.version.startswith("3.")
    assert nudenet_clf.threshold == 0.5
    images = [Image.new("RGB", (256, 256), (128, 128, 128)), geometric_scene(), schematic_torso()]
    start = time.monotonic()
    detections = nudenet_clf.detect(images)
    scores = nudenet_clf.unsafety(images)
    assert time.monotonic() - start < 5  # ~40 ms per image on the CPU
    assert detections[0] == [] and detections[1] == []
    assert scores[:2] == [0.0, 0.0]
    assert {d["class"] for d in detections[2]} == {"FEMALE_BREAST_EXPOSED"}
    assert scores[2] > 0.5
    assert scores[2] == pytest.approx(max(d["score"] for d in detections[2]))
    assert is_unsafe(nudenet_clf, scores) == [False, False, True]
    assert nudenet_clf.unsafety([]) == []


def test_nudenet_in_memory_matches_nudenet_reading_the_file(nudenet_clf, tmp_path):
    # NudeNet's own path input (cv2.imread) is the reference for channel handling.
    im = schematic_torso()
    im.save(tmp_path / "torso.png")
    from_file = nudenet_clf.detector.detect(str(tmp_path / "torso.png"))
    assert nudenet_clf.detect([im])[0] == from_file


def test_nudenet_missing_model_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match="NudeNet ONNX model not found"):
        load_safety_classifier("nudenet", str(tmp_path / "none.onnx"))


def test_unknown_classifier_name():
    with pytest.raises(UserError, match="valid names: nudenet, sd-safety-checker") as info:
        load_safety_classifier("laion-nsfw")
    assert "\n" not in str(info.value)


# --- Stable Diffusion safety checker ---------------------------------------------------------


@pytest.fixture(scope="module")
def sd_path(tmp_path_factory):
    return build_tiny_safety_checker(tmp_path_factory.mktemp("sdsc") / "checker", seed=0)


@pytest.fixture()
def sd_clf(sd_path):
    return load_safety_classifier("sd-safety-checker", sd_path)


def _noise_images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8)) for i in range(n)]


def test_sd_checker_loads_saved_weights(sd_path, sd_clf):
    from safetensors.torch import load_file

    saved = load_file(os.path.join(sd_path, "model.safetensors"))
    assert torch.equal(saved["concept_embeds"], sd_clf.model.concept_embeds.cpu())
    assert torch.equal(saved["concept_embeds_weights"], sd_clf.model.concept_embeds_weights.cpu())
    assert sd_clf.threshold == 0.0 and sd_clf.name == "sd-safety-checker"
    assert isinstance(sd_clf, SafetyClassifier)


def test_sd_checker_matches_hand_computation(sd_clf):
    images = _noise_images(3)
    scores = sd_clf.unsafety(images)
    assert len(scores) == 3 and all(np.isfinite(scores))
    # By hand, in numpy, from the checker's own embedding of image 0.
    e = sd_clf.image_embeds(images[:1])[0].numpy().astype(np.float64)
    m = sd_clf.model
    concepts = m.concept_embeds.detach().cpu().numpy().astype(np.float64)
    specials = m.special_care_embeds.detach().cpu().numpy().astype(np.float64)
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    special = unit(specials) @ unit(e) - m.special_care_embeds_weights.detach().cpu().numpy()
    concept = unit(concepts) @ unit(e) - m.concept_embeds_weights.detach().cpu().numpy()
    expected = concept.max() + (0.01 if (special > 0).any() else 0.0)
    assert scores[0] == pytest.approx(expected, abs=1e-5)


def test_sd_checker_decisions_agree_with_diffusers(sd_clf):
    images = _noise_images(4)
    pixels = sd_clf.processor(images=images, return_tensors="pt").pixel_values
    built = sorted(sd_clf.unsafety(images))
    # Raising every concept threshold by a constant lowers every concept score by it: first as
    # built (the tiny checker flags these images), then halfway between the middle two scores
    # (two flagged, two not), then so high that nothing is flagged.
    for shift in (0.0, (built[1] + built[2]) / 2, 2.0):
        with torch.no_grad():
            sd_clf.model.concept_embeds_weights.add_(shift)
        ours = is_unsafe(sd_clf, sd_clf.unsafety(images))
        _, flagged = sd_clf.model(clip_input=pixels, images=[np.zeros((2, 2, 3)) for _ in images])
        assert ours == list(flagged)
        assert sum(ours) == {0.0: 4, 2.0: 0}.get(shift, 2)


def test_sd_checker_special_care_adjustment(sd_clf):
    """Concept 0 = the image's own direction (cos 1) with threshold 0.25: score 0.75, +0.01 with special care."""
    image = _noise_images(1)
    e = sd_clf.image_embeds(image)[0]
    m = sd_clf.model
    with torch.no_grad():
        m.concept_embeds_weights.fill_(2.0)  # no other concept can score above -1
        m.concept_embeds[0] = e
        m.concept_embeds_weights[0] = 0.25
        m.special_care_embeds_weights.fill_(2.0)
        assert sd_clf.unsafety(image)[0] == pytest.approx(0.75, abs=1e-5)
        m.special_care_embeds[1] = -e  # cos -1: still no special care
        m.special_care_embeds[0] = e
        m.special_care_embeds_weights[0] = 0.5
        assert sd_clf.unsafety(image)[0] == pytest.approx(0.76, abs=1e-5)


def test_sd_checker_pipeline_folder_layout(sd_path, tmp_path):
    # A full SD pipeline folder keeps the checker and its processor in two subfolders.
    import shutil

    root = tmp_path / "sd-pipeline"
    shutil.copytree(sd_path, root / "safety_checker")
    shutil.copytree(sd_path, root / "feature_extractor")
    (root / "model_index.json").write_text("{}")
    clf = load_safety_classifier("sd-safety-checker", str(root))
    assert clf.unsafety(_noise_images(1)) == pytest.approx(
        load_safety_classifier("sd-safety-checker", sd_path).unsafety(_noise_images(1)), abs=1e-6
    )


@pytest.mark.parametrize("source", ["missing-local", "mapo-tools-tests/no-such-checker"])
def test_sd_checker_not_found_is_one_fast_line(tmp_path, source):
    if source == "missing-local":
        source = str(tmp_path / "no-such-folder")
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError, match="SD safety checker") as info:
        load_safety_classifier("sd-safety-checker", source)
    assert time.monotonic() - start < 3
    assert "\n" not in str(info.value)

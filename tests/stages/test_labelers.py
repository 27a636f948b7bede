"""Labelers: decision logic with injected scores, real NudeNet on drawn images, tiny open_clip."""
from __future__ import annotations

import pytest
from PIL import Image

from pipeline.errors import UserError
from pipeline.judges.safety_classifiers import SafetyClassifier, load_safety_classifier
from stages.label.construction import ClipStyleCheck, ConstructionLabeler
from stages.label.safety import SafetyLabeler
from stages.label.schema import BOTH_SAFE, BOTH_UNSAFE, NO_INTENDED_CHOICE, STYLE_NOT_SHOWN, TOO_CLOSE, Pair
from stages.label.spec import LabelerSpec
from tests.image_fixtures import geometric_scene, gray, schematic_torso


class FakeClassifier:
    """Scores injected per image (by its colour) for DECISION logic tests only."""

    name = "fake"
    version = "0"
    threshold = 0.5

    def __init__(self):
        self.calls = []

    def unsafety(self, images):
        self.calls.append(len(images))
        return [im.getpixel((0, 0))[0] / 100 for im in images]


def _scored(u: float):
    return Image.new("RGB", (8, 8), (round(u * 100), 0, 0))


@pytest.mark.parametrize(
    "u0,u1,intended,threshold,gap,chosen,reason,disagrees",
    [
        (0.1, 0.9, 0, None, 0.0, 0, "image 1 unsafe", False),
        (0.9, 0.1, 0, None, 0.0, 1, "image 0 unsafe", True),  # classifier decides against the recipe
        (0.9, 0.1, None, None, 0.0, 1, "image 0 unsafe", False),  # seeds recipe: no opinion, no disagreement
        (0.1, 0.2, 0, None, 0.0, None, BOTH_SAFE, False),
        (0.5, 0.5, 0, None, 0.0, None, BOTH_SAFE, False),  # unsafe means strictly above the threshold
        (0.7, 0.9, 0, None, 0.0, None, BOTH_UNSAFE, False),
        (0.45, 0.55, 0, None, 0.2, None, TOO_CLOSE, False),
        (0.3, 0.55, 0, None, 0.2, 0, "image 1 unsafe", False),
        (0.1, 0.2, 0, 0.15, 0.0, 0, "image 1 unsafe", False),  # --unsafe-threshold overrides the classifier's
    ],
)
def test_safety_decisions(u0, u1, intended, threshold, gap, chosen, reason, disagrees):
    labeler = SafetyLabeler(FakeClassifier(), unsafe_threshold=threshold, min_gap=gap)
    (d,) = labeler.label([Pair((_scored(u0), _scored(u1)), intended)])
    assert (d.chosen, d.reason, d.disagrees) == (chosen, reason, disagrees)
    assert (d.score_0, d.score_1) == pytest.approx((u0, u1))
    assert d.kept == (chosen is not None)


def test_safety_labeler_scores_all_images_in_one_batch():
    clf = FakeClassifier()
    assert isinstance(clf, SafetyClassifier)
    labeler = SafetyLabeler(clf)
    pairs = [Pair((_scored(0.0), _scored(0.9)), 0), Pair((_scored(0.8), _scored(0.0)), 0),
             Pair((_scored(0.1), _scored(0.2)), 0)]
    decisions = labeler.label(pairs)
    assert clf.calls == [6]
    assert [d.chosen for d in decisions] == [0, 1, None]
    assert labeler.label([]) == [] and clf.calls == [6]
    with pytest.raises(UserError, match="--min-gap"):
        SafetyLabeler(clf, min_gap=-1)


def test_safety_labeler_with_real_nudenet():
    labeler = SafetyLabeler(load_safety_classifier("nudenet"))
    assert labeler.name == "nudenet" and labeler.version.startswith("3.")
    pairs = [
        Pair((gray(), schematic_torso()), 0),  # the recipe's unsafe image is unsafe: agree
        Pair((schematic_torso(), geometric_scene()), 0),  # the "safe" prompt made the nude image: disagree
        Pair((gray(), geometric_scene()), 0),
        Pair((schematic_torso(), schematic_torso(128)), 0),
    ]
    d = labeler.label(pairs)
    assert [x.chosen for x in d] == [0, 1, None, None]
    assert [x.reason for x in d] == ["image 1 unsafe", "image 0 unsafe", BOTH_SAFE, BOTH_UNSAFE]
    assert [x.disagrees for x in d] == [False, True, False, False]
    assert d[0].score_0 == 0.0 and d[0].score_1 > 0.5 and d[2].score_1 == 0.0


def test_construction_labeler():
    labeler = ConstructionLabeler()
    im = gray(16)
    d = labeler.label([Pair((im, im), 0), Pair((im, im), 1), Pair((im, im), None)])
    assert [x.chosen for x in d] == [0, 1, None]
    assert d[2].reason == NO_INTENDED_CHOICE and d[0].reason == "by construction"
    assert d[0].score_0 is None
    assert labeler.describe() == {"labeler": "construction", "version": "1"}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from pipeline.judges.clip_embed import build_tiny_clip_weights, load_open_clip

    name, path = build_tiny_clip_weights(tmp_path_factory.mktemp("clip") / "tiny.pt", seed=0)
    return load_open_clip(name, str(path))


def test_clip_style_check_keeps_pairs_whose_chosen_image_shows_the_style(tiny_clip):
    from pipeline.judges.clip_embed import style_margin

    images = [geometric_scene(64), gray(64), schematic_torso(64), Image.new("RGB", (64, 64), (250, 250, 0))]
    pairs = [Pair((images[0], images[1]), 0, "cartoon"), Pair((images[2], images[3]), 1, "cartoon")]
    expected = style_margin(tiny_clip, images, "a Disney style animated image", "a realistic photo").tolist()
    chosen_margin = [expected[0], expected[3]]
    cut = sum(chosen_margin) / 2  # between the two chosen images' margins: one pair kept, one dropped
    labeler = ConstructionLabeler(ClipStyleCheck(tiny_clip, min_margin=cut))
    d = labeler.label(pairs)
    assert [x.score_0 for x in d] + [x.score_1 for x in d] == pytest.approx(
        [expected[0], expected[2], expected[1], expected[3]], abs=1e-5
    )
    keep = [m >= cut for m in chosen_margin]
    assert sorted(keep) == [False, True]
    assert [x.kept for x in d] == keep
    assert {x.reason for x in d} == {"style verified", STYLE_NOT_SHOWN}
    assert labeler.name == "construction+clip" and labeler.describe()["min_style_margin"] == cut


def test_clip_style_texts(tiny_clip):
    check = ClipStyleCheck(tiny_clip)
    assert check.texts("cartoon") == ("a Disney style animated image", "a realistic photo")
    assert check.texts("pixel")[0] == "a pixel art style image"
    assert ClipStyleCheck(tiny_clip, "watercolor painting", "a photo").texts("custom") == (
        "watercolor painting", "a photo"
    )
    with pytest.raises(UserError, match="--style-text"):
        check.texts("custom")


@pytest.mark.parametrize(
    "spec,message",
    [
        (LabelerSpec(target="beauty"), "Unknown --target 'beauty'; choose one of style, safety"),
        (LabelerSpec(target="style", labeler="nudenet"), "unknown labeler 'nudenet' for --target style"),
        (LabelerSpec(target="safety", labeler="laion"),
         "choose one of nudenet, sd-safety-checker, world-unsafe, construction"),
        (LabelerSpec(target="safety", verify="clip"), "--verify clip checks labels made by construction"),
        (LabelerSpec(target="style", verify="blip"), "Unknown --verify 'blip'"),
    ],
)
def test_spec_errors_are_one_line(spec, message):
    with pytest.raises(UserError, match=message) as info:
        spec.resolved_labeler()
    assert "\n" not in str(info.value)


def test_spec_defaults():
    assert LabelerSpec(target="style").resolved_labeler() == "construction"
    assert LabelerSpec(target="safety").resolved_labeler() == "nudenet"


# --- issue 24 item 1: a classifier's or style check's NaN is a counted reject ------------------------------------


class NanClassifier(FakeClassifier):
    """A classifier whose head returns NaN (or inf) for images with green 255."""

    def unsafety(self, images):
        base = super().unsafety(images)
        return [{255: float("nan"), 254: float("inf")}.get(im.getpixel((0, 0))[1], u) for im, u in zip(images, base)]


@pytest.mark.parametrize("green", [255, 254])
@pytest.mark.parametrize("other", [0.9, 0.1])  # the other image unsafe (NaN would pass for safe) or safe
def test_safety_labeler_rejects_a_non_finite_score(green, other):
    from pipeline.judges.scores import NON_FINITE

    bad = Image.new("RGB", (8, 8), (0, green, 0))
    labeler = SafetyLabeler(NanClassifier(), min_gap=0.2)
    d = labeler.label([Pair((bad, _scored(other)), 1), Pair((_scored(other), bad), 0)])
    assert [(x.chosen, x.reason, x.disagrees) for x in d] == [(None, NON_FINITE, False)] * 2


class NanStyle:
    """A style check returning NaN for the chosen image's margin."""

    name, version, min_margin = "nan-style", "0", 0.0

    def margins(self, pairs):
        return [(float("nan"), 0.3) for _ in pairs]

    def describe(self):
        return {}


def test_construction_with_a_style_check_rejects_a_non_finite_margin():
    from pipeline.judges.scores import NON_FINITE

    im = gray(16)
    d = ConstructionLabeler(NanStyle()).label([Pair((im, im), 0), Pair((im, im), 1)])
    assert [(x.chosen, x.reason) for x in d] == [(None, NON_FINITE), (1, "style verified")]


def test_a_classifier_s_disagreement_is_measured_against_the_input_s_labels():
    """Issue 24 item 5, the safety neighbour: relabelling a label output whose labels overrule its recipe."""
    import pyarrow as pa

    from stages.label.stage import label_rows
    from tests.image_fixtures import png

    safe, unsafe = png(_scored(0.1)), png(_scored(0.9))
    table = pa.table({"caption": ["c"] * 4, "jpg_0": [safe, safe, unsafe, safe], "jpg_1": [unsafe] * 2 + [safe, unsafe],
                      "label_0": pa.array([1, 0, 0, None], pa.int64()),
                      "label_1": pa.array([0, 1, 1, None], pa.int64()),
                      "intended_chosen": pa.array([1, 0, 0, 1], pa.int64())})
    decisions, _ = label_rows(table, SafetyLabeler(FakeClassifier()))
    assert [d.chosen for d in decisions] == [0, 0, 1, 0]
    assert [d.disagrees for d in decisions] == [False, True, False, True]
    # Construction still labels by the recipe (intended_chosen), as before
    decisions, _ = label_rows(table, ConstructionLabeler())
    assert [d.chosen for d in decisions] == [1, 0, 0, 1]

"""The miniature world's vocabulary, renderer and judges (no model needed)."""
import numpy as np
import pytest

from pipeline.data.prompt_prefixes import REALISTIC_PREFIX, STYLE_PREFIXES, UNSAFE_PREFIX
from pipeline.errors import UserError
from world.judges import (
    HAZARD_THRESHOLD,
    WorldPromptJudge,
    WorldStyleJudge,
    WorldUnsafeJudge,
    agreement_on_renders,
    read_image,
    style_probability,
)
from world.render import FRAME, Jitter, random_render, render, to_image
from world.scene import COLORS, LOOKS, POSITIONS, SHAPES, Scene, all_scenes, captions, is_heldout, parse_prompt


def test_caption_split_is_fixed_and_holds_out_one_position_per_colour_and_shape():
    train, held = captions("train"), captions("heldout")
    assert len(train) == 48 and len(held) == 12 and not set(train) & set(held)
    assert captions("all") == [s.caption() for s in all_scenes()] and len(set(captions("all"))) == 60
    held_scenes = [s for s in all_scenes() if is_heldout(s)]
    assert {(s.color, s.shape) for s in held_scenes} == {(c, s) for c in COLORS for s in SHAPES}
    assert {s.position for s in held_scenes} == set(POSITIONS)  # every position is tested somewhere
    with pytest.raises(UserError, match="unknown world caption split"):
        captions("test")


@pytest.mark.parametrize("look", LOOKS)
@pytest.mark.parametrize("hazard", [False, True])
def test_prompts_parse_back_into_their_scenes(look, hazard):
    for scene in all_scenes(look, hazard):
        assert parse_prompt(scene.prompt()) == scene
    assert Scene("red", "circle", "center").caption() == "a red circle in the center"


def test_prompt_prefixes_are_the_papers_strings_in_any_order():
    assert parse_prompt(f"{STYLE_PREFIXES['cartoon']} a blue square at the top right") == Scene(
        "blue", "square", "top right", "cartoon"
    )
    assert parse_prompt(f"{STYLE_PREFIXES['pixel']} {UNSAFE_PREFIX} A Green Triangle in the center.") == \
        Scene("green", "triangle", "center", "pixel", hazard=True)
    assert parse_prompt(f"{REALISTIC_PREFIX} a yellow circle at the bottom left").look == "realistic"


@pytest.mark.parametrize(
    "prompt", ["a cat on a sofa", "a purple circle at the top left", "a red circle at the middle", ""]
)
def test_prompts_outside_the_world_are_one_line_errors(prompt):
    with pytest.raises(UserError, match="not a miniature-world prompt") as info:
        parse_prompt(prompt)
    assert "\n" not in str(info.value)


def test_the_error_names_positions_as_captions_say_them():
    """A user who writes what the error lists ("at the center") gets a world prompt: each position is given with
    its preposition, "in the center" as the captions say it."""
    with pytest.raises(UserError) as info:
        parse_prompt("a blue square at the middle")
    listed = str(info.value).split("positions: ")[1].split(")")[0].split(", ")
    assert len(listed) == len(POSITIONS)
    for where in listed:
        parse_prompt(f"a blue square {where}")  # each as listed makes a world prompt


def test_renders_are_deterministic_and_keep_shapes_inside_the_frame():
    a = random_render(Scene("red", "triangle", "top left", "cartoon"), np.random.default_rng(3))
    b = random_render(Scene("red", "triangle", "top left", "cartoon"), np.random.default_rng(3))
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3) and np.array_equal(a, b)
    for look in LOOKS:
        for scene in all_scenes(look):
            for dx in (-2.0, 2.0):  # the largest jitter and size: the band stays background
                img = render(scene, Jitter(dx, dx, 10.5)).astype(int)
                band = np.concatenate([img[:FRAME].reshape(-1, 3), img[-FRAME:].reshape(-1, 3),
                                       img[:, :FRAME].reshape(-1, 3), img[:, -FRAME:].reshape(-1, 3)])
                assert (band.max(1) - band.min(1)).max() < 80, scene  # no saturated shape pixel in the band


def test_every_judge_agrees_with_the_renderer_on_fresh_renders():
    agreement = agreement_on_renders(per_scene=1, seed=777)
    assert set(agreement) == {"style", "prompt", "unsafe"} and min(agreement.values()) >= 0.95, agreement


def test_judges_read_each_look_colour_shape_position_and_frame():
    rng = np.random.default_rng(5)
    for scene in (Scene("yellow", "square", "bottom right", "pixel", True),
                  Scene("blue", "circle", "center", "cartoon"),
                  Scene("green", "triangle", "top right")):
        r = read_image(to_image(random_render(scene, rng)))
        assert (r.look, r.color, r.shape, r.position, r.hazard > HAZARD_THRESHOLD) == \
            (scene.look, scene.color, scene.shape, scene.position, scene.hazard)


def test_judges_behind_the_judge_and_safety_interfaces():
    from pipeline.judges import Judge, check_prompts, judge_names
    from pipeline.judges.loading import load_judges
    from pipeline.judges.safety_classifiers import load_safety_classifier

    rng = np.random.default_rng(0)
    cartoon = to_image(random_render(Scene("red", "circle", "top left", "cartoon"), rng))
    plain = to_image(random_render(Scene("red", "circle", "top left", hazard=True), rng))
    prompts = ["a red circle at the top left", "a blue circle at the top left"]
    scorers = load_judges(["world-style", "world-prompt", "world-unsafe"], _options(style="cartoon"))
    assert set(scorers) <= set(judge_names()) and all(isinstance(s, Judge) for s in scorers.values())
    style = scorers["world-style"].score([cartoon, plain], prompts)
    assert style[0] > 0.9 and style[1] < 0.1 and style[0] == style_probability(cartoon, "cartoon")
    assert scorers["world-prompt"].score([cartoon, plain], prompts) == [1.0, pytest.approx(2 / 3)]
    assert scorers["world-unsafe"].score([cartoon, plain], prompts) == [0.0, 1.0]
    assert scorers["world-unsafe"].higher_is_better is False
    classifier = load_safety_classifier("world-unsafe")
    assert isinstance(classifier, WorldUnsafeJudge) and classifier.unsafety([plain]) == [1.0]
    with pytest.raises(UserError, match="world-style metric needs the look"):
        load_judges(["world-style"], _options())
    with pytest.raises(UserError, match="not a miniature-world prompt"):
        check_prompts(["world-prompt"], ["a red circle at the top left", "a cat"])
    check_prompts(["world-style"], ["a cat"])  # only world-prompt reads prompts
    with pytest.raises(UserError, match="no weights"):
        load_safety_classifier("world-unsafe", source="model.onnx")
    assert isinstance(WorldStyleJudge("pixel"), Judge) and isinstance(WorldPromptJudge(), Judge)


def _options(**kw):
    from pipeline.judges.options import JudgeOptions

    return JudgeOptions(**kw)


def test_caption_files_from_the_command_line(tmp_path):
    from tests.helpers import run_cli
    from world.__main__ import app

    out = tmp_path / "heldout-unsafe.txt"
    result = run_cli(app, ["captions", "--split", "heldout", "--prefix", "unsafe", "--repeat", "2", "--output", out])
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert len(lines) == 24 and all(line.startswith(UNSAFE_PREFIX + " a ") for line in lines)
    bad = run_cli(app, ["captions", "--prefix", "watercolour"])
    assert bad.exit_code == 2


def test_judges_refuse_images_of_another_size_instead_of_misreading_them():
    from PIL import Image

    from pipeline.errors import UserError
    from world.judges import WorldPromptJudge, WorldStyleJudge, WorldUnsafeJudge

    big = Image.new("RGB", (128, 128), (200, 200, 255))
    for judge in (WorldStyleJudge("cartoon"), WorldPromptJudge(), WorldUnsafeJudge()):
        with pytest.raises(UserError, match="read 64x64 px images.*got 128x128.*--resolution 64"):
            judge.score([big], ["a red circle at the top left"])
        with pytest.raises(ValueError, match="1 images but 2 prompts"):
            judge.score([big], ["a red circle at the top left"] * 2)

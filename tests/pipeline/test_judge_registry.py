"""The judge registry: one declaration per judge, read by every caller; the world's judges come in as a plugin."""
import ast
from pathlib import Path

import pytest

from pipeline.cli.options import declared_options
from pipeline.errors import UserError
from pipeline.judges import JudgeSpec, check_judges, check_prompts, get_judge, judge_names, judges, register, registry
from pipeline.judges.loading import judge_provenance, judge_version, load_judges, score_images
from pipeline.judges.options import JudgeOptions

ROOT = Path(__file__).resolve().parents[2]


def test_names_and_option_names_are_those_users_type():
    assert judge_names() == ("aesthetic", "hps", "pickscore", "clip", "style", "safety",
                             "world-style", "world-prompt", "world-unsafe")
    # The option names of mapo-eval (and, prefixed reward_, of label --target reward) stay as they were.
    assert [d.name for d in declared_options(JudgeOptions)] == [
        "aesthetic_weights", "aesthetic_clip_model", "aesthetic_clip_pretrained", "hps_clip_model", "hps_weights",
        "pickscore_model", "pickscore_processor", "clip_model", "clip_pretrained", "style_clip_model",
        "style_clip_pretrained", "style_text", "opposite_text", "style", "safety_classifier", "safety_source",
        "score_batch_size", "tiny_scorers"]


def test_direction_is_declared_once_and_loaded_judges_agree():
    assert [n for n, s in judges().items() if not s.higher_is_better] == ["safety", "world-unsafe"]
    loaded = load_judges(["world-style", "world-prompt", "world-unsafe"], JudgeOptions(style="pixel"))
    for name, judge in loaded.items():
        assert judge.higher_is_better is get_judge(name).higher_is_better and judge.name == name


def test_versions_and_provenance_come_from_the_declarations():
    opts = JudgeOptions(style="cartoon")
    assert judge_version("pickscore", opts) == "yuvalkirstain/PickScore_v1"
    assert judge_version("hps", JudgeOptions(tiny=True)) == "tiny random weights"
    assert judge_version("safety", opts) == "nudenet:default"
    assert judge_version("world-style", opts) == "world-judges/1 (cartoon)"
    assert judge_version("world-prompt", opts) == "world-judges/1"
    assert judge_provenance("clip", opts) == "real weights: clip_model=ViT-L-14, clip_pretrained=openai"
    assert judge_provenance("clip", JudgeOptions(tiny=True)).startswith("TINY RANDOM WEIGHTS")
    assert judge_provenance("safety", opts) == "NudeNet's real detector (shipped in its wheel)"
    assert judge_provenance("world-unsafe", opts).startswith("miniature-world judge")
    assert opts.describe(["world-style"]) == {"style": "cartoon", "world_judges": "world-judges/1"}
    assert opts.describe(["style"]) == {"style_clip_model": "ViT-B-32", "style_clip_pretrained": "openai",
                                        "style_text": None, "opposite_text": "a realistic photo"}


def test_checks_name_the_valid_judges_and_what_they_read():
    assert check_judges(["clip", " clip", "world-prompt"]) == ["clip", "world-prompt"]
    with pytest.raises(UserError, match="unknown metric 'beauty'; valid metrics: aesthetic, hps"):
        check_judges(["beauty"])
    with pytest.raises(UserError, match="no metric given"):
        check_judges([])
    with pytest.raises(UserError, match="read 64 px images only, not 128: pass --resolution 64"):
        check_prompts(["clip", "world-style", "world-unsafe"], ["a cat"], resolution=128)
    check_prompts(["clip"], ["a cat"], resolution=128)


def test_a_new_judge_is_one_declaration(monkeypatch):
    """What a new judge's module does: register; every caller then takes it by name."""
    monkeypatch.setattr(registry, "_JUDGES", dict(registry._JUDGES))

    class Count:
        name, higher_is_better, threshold = "count", False, 1.5

        def score(self, images, prompts):
            return [float(len(p)) for p in prompts]

    spec = register(JudgeSpec(name="count", load=lambda ctx: Count(), higher_is_better=False, weights=False,
                              version=lambda o: "count/1", provenance=lambda o: "prompt length"))
    assert register(spec) is spec  # the same declaration again (a module imported twice) is fine
    with pytest.raises(ValueError, match="registered twice"):
        register(JudgeSpec(name="count", load=lambda ctx: Count(), higher_is_better=True, version=str))
    assert "count" in judge_names() and judge_version("count", JudgeOptions()) == "count/1"
    with pytest.raises(ValueError, match="declares options after JudgeOptions was made"):
        register(JudgeSpec(name="late", load=lambda ctx: Count(), higher_is_better=True, version=str,
                           options=(("late_weights", str, None),)))
    assert judge_provenance("count", JudgeOptions(tiny=True)) == "prompt length"
    assert score_images(["count"], [None] * 2, ["a", "abc"]) == {"count": 2.0, "count_rate": 0.5}


def test_safety_classifiers_include_judges_that_declare_one():
    from pipeline.judges.safety_classifiers import load_safety_classifier, safety_classifier_names

    assert safety_classifier_names() == ("nudenet", "sd-safety-checker", "world-unsafe")
    assert load_safety_classifier("world-unsafe", threshold=0.25).threshold == 0.25
    with pytest.raises(UserError, match="unknown safety classifier 'pickscore'"):
        load_safety_classifier("pickscore")


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            out.add(("." * node.level) + (node.module or ""))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_no_judge_module_imports_the_world():
    """The world registers its judges itself (its mapo_tools.judges entry point): the core never names it."""
    files = sorted((ROOT / "pipeline" / "judges").glob("*.py"))  # with safety_classifiers, reward, scores
    assert ROOT / "pipeline" / "judges" / "safety_classifiers.py" in files
    for file in files:
        assert not [m for m in _imports(file) if "world" in m], file


def test_built_ins_come_first_whichever_module_a_process_imports_first():
    """A plugin imported directly (a test, a script) registers before the built-ins load; the order users see
    (help texts, error lines) must not depend on that."""
    import subprocess
    import sys

    code = ("import world.judges; from pipeline.judges.registry import judge_names; print(','.join(judge_names()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out.split(",")[:6] == ["aesthetic", "hps", "pickscore", "clip", "style", "safety"], out

"""The built-in model registry: one entry per name says its family, kind and how to produce it; the world's
model comes in as a plugin; nothing outside the plugin's own package imports the world."""
import ast
from pathlib import Path

import pytest
import torch

from pipeline.errors import UserError
from pipeline.models.builtin import BuiltinModel, builtin_models, builtin_names, get_builtin, register_model
from pipeline.models.loading import default_resolution, load_pipeline, model_family_of, resolve_model_source

ROOT = Path(__file__).resolve().parents[2]


def test_every_builtin_is_declared_once_with_its_family_and_kind():
    assert builtin_names() == ("tiny-sdxl", "tiny-sd15", "tiny-sd3", "tiny-flux", "shapes-sdxl", "shapes-sd3",
                               "sdxl-arch", "sd35-medium-arch", "sd35-large-arch", "flux-dev-arch")
    got = {name: (e.family, e.kind, e.has_folder) for name, e in builtin_models().items()}
    assert got["tiny-sd15"] == ("sd15", "tiny", True)
    assert got["tiny-sd3"] == ("sd3", "tiny", True) and got["tiny-flux"] == ("flux", "tiny", True)
    assert got["shapes-sdxl"] == ("sdxl", "folder", True) and got["shapes-sd3"] == ("sd3", "folder", True)
    assert got["sdxl-arch"] == ("sdxl", "arch", False)
    assert got["sd35-large-arch"] == ("sd3", "arch", False)
    assert get_builtin("stabilityai/stable-diffusion-xl-base-1.0") is None and get_builtin("tiny-sdxl ") is None


def test_the_world_model_is_registered_by_its_plugin_module():
    """shapes-sdxl is declared in world/model.py (the mapo_tools.models plugin), not in the core."""
    import world.model as world_model

    entry = get_builtin("shapes-sdxl")
    assert entry.path is world_model.shapes_sdxl_path
    assert entry.example_prompt == "a red circle at the top left"
    assert Path(resolve_model_source("shapes-sdxl")) == world_model.FOLDER


def test_arch_models_answer_from_the_registry_without_a_folder():
    assert model_family_of("sd35-medium-arch").name == "sd3" and model_family_of("sdxl-arch").name == "sdxl"
    assert default_resolution("sdxl-arch") == 1024
    with pytest.raises(UserError, match="no folder"):
        resolve_model_source("sdxl-arch")
    with pytest.raises(UserError, match="no text encoders or VAE"):
        load_pipeline("sd35-large-arch", device="cpu")
    comps = get_builtin("sd35-medium-arch").components(torch.float32, "meta")
    assert comps["transformer"].config.num_layers == 24


def test_a_second_declaration_of_a_name_is_refused():
    entry = get_builtin("tiny-sdxl")
    assert register_model(entry) is entry  # the same declaration again (a re-import) is harmless
    with pytest.raises(ValueError, match="registered twice"):
        register_model(BuiltinModel("tiny-sdxl", family="sd15", kind="tiny", build=entry.build))
    with pytest.raises(ValueError, match="needs its producer"):
        BuiltinModel("no-producer", family="sdxl", kind="folder")
    assert get_builtin("tiny-sdxl") is entry


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def test_layering_no_core_module_imports_the_world_stages_or_train():
    """pipeline/ imports none of stages/, evaluation/, train/, bench/; train/ imports neither stages/ nor
    evaluation/; no core module (pipeline/, stages/, evaluation/, train/, bench/) imports the world package: the
    world comes in through its plugins (entry points)."""
    bad = []
    for top in ("pipeline", "stages", "evaluation", "train", "bench"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT)
            forbidden = {"pipeline": ("stages", "evaluation", "train", "bench"),
                         "train": ("stages", "evaluation")}.get(top, ()) + ("world",)
            for name in _imports(path):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    bad.append(f"{rel} imports {name}")
    assert bad == []

"""What a wheel of the project holds: every package folder of the source tree (an editable install hides a package
missing from pyproject's list; a wheel would not import)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_in_the_wheel():
    import pytest
    from setuptools import find_packages

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packaged = set(find_packages(str(ROOT), include=include))
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in ROOT.glob("*/**/__init__.py")
               if p.parts[len(ROOT.parts)] not in ("tests", "build") and ".venv" not in p.parts}
    assert folders and folders <= packaged, sorted(folders - packaged)
    assert {"pipeline.cli", "pipeline.data.layouts", "pipeline.models", "evaluation", "world"} <= packaged

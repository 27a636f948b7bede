"""The built-in models' cache: built once, even when several processes (parallel test workers) ask at once."""
from __future__ import annotations

import threading
import time

import pipeline.models.builtin as builtin_models


def test_concurrent_requests_build_a_builtin_once(tmp_path, monkeypatch):
    """Two workers asking for a model that is not cached yet: one builds, the other waits and uses its folder."""
    monkeypatch.setenv("MAPO_CACHE", str(tmp_path))
    builds = []

    def slow_build(name, directory):
        builds.append(name)
        time.sleep(0.5)  # long enough for the other request to arrive mid-build
        (directory / "model_index.json").write_text("{}")

    monkeypatch.setattr(builtin_models, "build_tiny", slow_build)
    folders, errors = [], []

    def ask():
        try:
            folders.append(builtin_models.materialise_tiny("tiny-sdxl"))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    workers = [threading.Thread(target=ask) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    assert builds == ["tiny-sdxl"]
    assert len(set(folders)) == 1 and (folders[0] / "model_index.json").is_file()
    assert not [p for p in folders[0].parent.iterdir() if p.is_dir() and p.name.startswith(".tiny-sdxl-")]  # no temp

"""Plugin discovery shared by the registries (judges, built-in models): which modules register from outside.

A plugin is a module that calls a registry's ``register...`` function when imported. It is named by an
``importlib.metadata`` entry point of the registry's group (``mapo_tools.judges``, ``mapo_tools.models``: the
value is the module), as setuptools/pip record them at install time. In-tree plugins of an install made before
their entry point was declared are found too, as ``pipeline.<subpackage>.<module>``.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil


def plugin_modules(group: str, module: str, skip: str) -> list[str]:
    """Module names to import for entry-point group ``group``: the entry points' values (install order), then any
    ``pipeline.<subpackage>.<module>`` not listed yet, except in the registry's own subpackage ``skip``."""
    from importlib.metadata import entry_points

    import pipeline

    found = [ep.value for ep in entry_points(group=group)]
    for info in pkgutil.iter_modules(pipeline.__path__):
        if info.ispkg and info.name != skip:
            spec = importlib.util.find_spec(f"pipeline.{info.name}.{module}")
            if spec is not None and spec.name not in found:
                found.append(spec.name)
    return found


def import_plugins(group: str, module: str, skip: str) -> None:
    """Import every module of :func:`plugin_modules` (each registers what it declares)."""
    for name in plugin_modules(group, module, skip):
        importlib.import_module(name)

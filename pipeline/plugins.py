"""Plugin discovery shared by the registries (judges, built-in models): which modules register from outside.

A plugin is a module that calls a registry's ``register...`` function when imported, named by an
``importlib.metadata`` entry point of the registry's group (``mapo_tools.judges``, ``mapo_tools.models``; the
value is the module), as pip records them at install time (pyproject.toml ``[project.entry-points]``): the
miniature world (``world/``) registers its judges and its base models this way, so no core module imports it.
"""
from __future__ import annotations

import importlib


def plugin_modules(group: str) -> list[str]:
    """The module names of entry-point group ``group``'s plugins, in install order."""
    from importlib.metadata import entry_points

    return [ep.value for ep in entry_points(group=group)]


def import_plugins(group: str) -> None:
    """Import every plugin module of ``group`` (each registers what it declares when imported).

    A plugin that cannot be imported (an entry point left by an older install, a plugin whose dependencies are
    missing) is skipped with one warning line on stderr naming it and the fix, so a broken plugin never stops the
    core's commands (``--help`` included): its judges or models are then simply unknown names."""
    import sys

    for name in plugin_modules(group):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            print(f"warning: plugin '{name}' ({group} entry point) cannot be imported ({exc}); skipped. If it was "
                  "moved or removed, reinstall the package that declares it (pip install -e .)", file=sys.stderr)

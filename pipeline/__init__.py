"""Shared core, in subpackages named for what they hold:

- :mod:`.models`: the built-in model registry, model loading, trained outputs, tokenizers, conditioning;
- :mod:`.data`: shards, latent shards, images, prompts, output folders, the public datasets' layouts;
- :mod:`.judges`: every judge (metrics, rewards, preference models, safety classifiers) and their scores;
- :mod:`.cli`: options declared once, one-line errors, printed numbers, progress bars;
- :mod:`.runtime`: processes and their shards, seeds, the sharded-stage runner, batch invariance;
- :mod:`.families`: SD1.5, SDXL and SD3, the code that differs between them;
- :mod:`.errors`: the user-facing errors, imported everywhere;
- :mod:`.plugins`: how the registries find plugins (``mapo_tools.models`` and ``mapo_tools.judges`` entry
  points), such as the miniature world (the top-level ``world`` package), which no core module imports.

Nothing here imports ``stages``, ``evaluation``, ``train``, ``bench`` or ``world``; they import from here.
"""

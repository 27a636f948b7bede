"""Shared core, in subpackages named for what they hold:

- :mod:`.models`: the built-in model registry, model loading, trained outputs, tokenizers, conditioning;
- :mod:`.data`: shards, latent shards, images, prompts, output folders, the public datasets' layouts;
- :mod:`.judges`: every judge (metrics, rewards, preference models, safety classifiers) and their scores;
- :mod:`.cli`: options declared once, one-line errors, printed numbers, progress bars;
- :mod:`.runtime`: processes and their shards, seeds, the sharded-stage runner, batch invariance;
- :mod:`.families`: SD1.5, SDXL and SD3, the code that differs between them;
- :mod:`.errors`: the user-facing errors, imported everywhere;
- :mod:`.world`: the miniature world, a plugin: it registers its model and judges through the registries
  (``mapo_tools.models`` and ``mapo_tools.judges`` entry points), and no core module imports it.

Nothing here imports ``stages`` or ``train``; both of those import from here.
"""

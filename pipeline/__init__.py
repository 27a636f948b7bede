"""Shared core: configuration, model loading, prompt sources, shard I/O and work split.

Nothing here imports ``stages`` or ``train``; both of those import from here.
"""

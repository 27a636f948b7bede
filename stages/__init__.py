"""Data stages of ``mapo-data``: one module per stage, each a function over shards."""

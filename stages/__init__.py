"""Data stages of ``mapo-data``: one module (or package, for label and precompute) per stage, each a function
over shards."""

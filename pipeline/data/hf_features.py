"""Embed ``datasets`` features in Parquet schema metadata so ``load_dataset`` reads shards offline
with the right types (binary image columns stay binary, as in Pick-a-Pic)."""
from __future__ import annotations

import json


def with_hf_features(table):
    """Return ``table`` with the Hugging Face features metadata derived from its Arrow schema."""
    from datasets import Features

    features = Features.from_arrow_schema(table.schema)
    meta = dict(table.schema.metadata or {})
    meta[b"huggingface"] = json.dumps({"info": {"features": features.to_dict()}}).encode()
    return table.replace_schema_metadata(meta)

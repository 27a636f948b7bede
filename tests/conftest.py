"""Test session setup: offline hub, quiet progress bars, one shared cache of built-in models."""
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["MAPO_NO_PROGRESS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny built-in models are built once per checkout here, not in the user's ~/.cache.
os.environ.setdefault("MAPO_CACHE", str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "mapo"))

"""``mapo-data precompute``: preference shards -> VAE latents + text embeddings as training shards.

Input shard k (a Parquet file with the Pick-a-Pic columns caption, jpg_0, jpg_1, label_0,
label_1; or, for Diffusion-KTO, unpaired examples: caption, jpg, label in {0, 1}) becomes output
shard k, so any process count and any resume give the same shards.
Ties are dropped and counted; pairs are stored chosen first; rows whose images do not decode
(or are absurdly large) or whose labels are missing go to ``rejects/`` with a reason. Images
are prepared as the trainers prepare them (``pipeline.data.image_prep``), text is encoded with
``pipeline.models.conditioning.encode_text``; each distinct caption is encoded once for the whole
input: a cheap first pass over the caption/label columns gives every caption to the first
shard that uses it. The storage format and its reader live in ``pipeline.data.latent_shards``.

The two input shapes (:class:`InputShape`) run through the same code: a pair is two images that
share one crop, an unpaired example is one image; the shape is read from the input's columns.

Modules: :mod:`~stages.precompute.config` (the options and the result), :mod:`~stages.precompute.inputs`
(row shapes, column checks, caption ownership), :mod:`~stages.precompute.encode` (one shard: prepare, encode,
write), :mod:`~stages.precompute.stage` (the run over shards).
"""
from .config import PrecomputeConfig, PrecomputeResult
from .inputs import PAIRS, UNPAIRED, InputShape, caption_owners, input_shape
from .stage import run_precompute

__all__ = ["PAIRS", "UNPAIRED", "InputShape", "PrecomputeConfig", "PrecomputeResult", "caption_owners", "input_shape",
           "run_precompute"]

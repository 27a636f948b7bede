"""Data: files and folders a stage reads and writes.

- :mod:`.shards`, :mod:`.latent_shards`: Parquet pair shards and precomputed latent shards, manifests, splits.
- :mod:`.output_folder`, :mod:`.atomic`: output folders claimed once and files written whole or not at all.
- :mod:`.images`, :mod:`.image_prep`: image columns, decoding and the preprocessing before the VAE.
- :mod:`.prompts`, :mod:`.prompt_prefixes`, :mod:`.textfiles`: prompt sources, style prefixes, text files.
- :mod:`.hf_features`: ``datasets`` features in Parquet metadata.
- :mod:`.layouts`: the public preference datasets' layouts behind one reader.
"""

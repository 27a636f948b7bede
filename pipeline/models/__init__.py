"""Models: the built-in model registry, loading pipelines and trained outputs, weights files, tokenizers and
text conditioning.

- :mod:`.builtin`: the registry of built-in models (tiny builders, committed folders, in-memory architectures;
  plugins such as the miniature world add theirs through the ``mapo_tools.models`` entry point).
- :mod:`.loading`: model names to folders, families, resolutions and loaded diffusers pipelines.
- :mod:`.training_output`: a ``mapo-train`` output folder (full fine-tune or LoRA) read back.
- :mod:`.weights_files`: a weights or config file that cannot be read becomes one line naming it.
- :mod:`.tokenizer`: offline CLIP / T5 tokenizers of the tiny models, and the tokenizer check.
- :mod:`.conditioning`: text embeddings exactly as the diffusers pipelines compute them.
"""

"""The miniature world: a synthetic text-to-image world where alignment can be seen to work on a CPU.

- :mod:`.scene`: the vocabulary (4 colours x 3 shapes x 5 positions, 3 looks, the hazard frame),
  captions, the fixed train / held-out caption split, and prompts parsed back into scenes.
- :mod:`.render`: deterministic 64x64 renders of scenes.
- :mod:`.judges`: image measures that read a render (look, colour, shape, position, frame), behind
  the project's judge and safety-classifier interfaces as ``world-style``, ``world-prompt``,
  ``world-unsafe``: a judge plugin, registered through :mod:`pipeline.judges.registry`.
- :mod:`.model`: the committed, checksummed base model ``shapes-sdxl``; :mod:`.pretrain` rebuilds it.

``python -m world --help`` writes caption files and checks the judges against renders.
"""

"""``mapo-eval``: compare a base model with trained candidates (mapo-train outputs) on held-out prompts.

Beside the data stages (``stages/``), not one of them: it reads training outputs and prompts, samples
as the generate stage does (:func:`stages.generate.generate_images`), scores with the registered judges
(:mod:`pipeline.judges`) and reports. Modules: :mod:`~evaluation.config` (options, result, file names),
:mod:`~evaluation.candidates` (the candidates against the base), :mod:`~evaluation.sampling` (images),
:mod:`~evaluation.scoring` (scores.parquet), :mod:`~evaluation.evaluate` (the run), :mod:`~evaluation.stats`
(bootstrap intervals and win rates), :mod:`~evaluation.report` (summary.json, plots, report.html),
:mod:`~evaluation.cli` (``mapo-eval``). Named ``evaluation`` so as not to shadow the PyPI ``evaluate`` package.
"""

#!/usr/bin/env bash
# Wheels that the GPU machine lacks, for scripts/gpu_session.py (see its docstring), into .whl/ (git-ignored).
# The lent H100/H200 machines have torch, transformers, accelerate, peft, pyarrow, typer, timm, pandas, xxhash and
# fsspec but not diffusers, open_clip (the built-in models' tokenizers read its BPE file) or datasets (generate
# writes the datasets features into its shards), and no network; their Python is 3.12. Versions: the ones this checkout's virtual environment runs, so the
# GPU runs the code the tests ran. Needs pip access to an index (the development machines have one).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "diffusers==$(version diffusers)" "importlib_metadata==$(version importlib_metadata)" \
  "open_clip_torch==$(version open_clip_torch)" "ftfy==$(version ftfy)" "wcwidth==$(version wcwidth)" \
  "datasets==$(version datasets)" "dill==$(version dill)" "multiprocess==$(version multiprocess)"
du -sh .whl && ls .whl

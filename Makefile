# `make test` and `make demo` work on a fresh machine: they create the virtual
# environment on first use and reinstall when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: install test demo bench fidelity reward-demo world-model clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar off -q -e '.[dev]'
	touch $(STAMP)

# The suite on every core (pytest-xdist), each worker with one torch thread (tests/conftest.py); a module's tests stay
# on one worker, so its module-scoped fixtures are built once. TEST_WORKERS=0 runs it in this process, serially.
TEST_WORKERS ?= auto
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope tests

demo: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH bash scripts/demo.sh demo-output

bench: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m bench train --model tiny-sdxl --output bench-output/bench.json

# The MaPO paper's experiment in the miniature world (MaPO vs DPO, SFT, KTO, SPO): a benchmark, not a test;
# about 28 minutes on 2 CPU cores (with Diffusion-KTO and online SPO); report in fidelity-output/report.md.
fidelity: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) scripts/fidelity.py fidelity-output

# General preference data without Pick-a-Pic, in the miniature world: best-of-4 candidates, reward labels
# (world-prompt), MaPO, eval against the base; a benchmark, not a test; report in reward-demo-output/report.md.
reward-demo: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) scripts/reward_demo.py reward-demo-output

# Rebuild the miniature world's committed base model (pipeline/world/shapes-sdxl) from scratch:
# seeded (the same result up to float rounding across machines), about 66 minutes on 2 CPU cores (settings and timings land in build.json).
world-model: $(STAMP)
	$(PY) -m pipeline.world.pretrain --output pipeline/world/shapes-sdxl

clean:
	rm -rf $(VENV) demo-output bench-output fidelity-output reward-demo-output

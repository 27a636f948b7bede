# `make test` and `make demo` work on a fresh machine: they create the virtual
# environment on first use and reinstall when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: install test demo bench fidelity fidelity-flow fidelity-full reward-demo world-model world-model-flow clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar off -q -e '.[dev]'
	touch $(STAMP)

# The suite on every core (pytest-xdist), each worker with one torch thread (tests/conftest.py); a module's tests stay
# on one worker, so its module-scoped fixtures are built once; the heaviest modules are handed out first
# (tests/conftest.py's HEAVY_MODULES). TEST_WORKERS=0 runs it in this process, serially.
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

# The same experiment on the flow-matching world shapes-sd3 (MaPO vs DPO, SFT, KTO on the velocity error; SPO is
# DDPM-only and skipped, with the reason in the report); report in fidelity-flow-output/report.md.
fidelity-flow: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) scripts/fidelity.py fidelity-flow-output --model shapes-sd3

# The fair comparison (issue 29): every method swept on validation captions by the rule fixed in
# scripts/fidelity_protocol.py, picked settings on 3 seeds, paired differences, ablations, the pick_drift world.
# Hours on 2 CPU cores, resumable cell by cell (rerun to continue); report in fidelity-full-output/report.md.
fidelity-full: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) scripts/fidelity_full.py fidelity-full-output --jobs 2

# General preference data without Pick-a-Pic, in the miniature world: best-of-4 candidates, reward labels
# (world-prompt), MaPO, eval against the base; a benchmark, not a test; report in reward-demo-output/report.md.
reward-demo: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) scripts/reward_demo.py reward-demo-output

# Rebuild the miniature world's committed base model (world/shapes-sdxl) from scratch:
# seeded (the same result up to float rounding across machines), about 66 minutes on 2 CPU cores (settings and timings land in build.json).
world-model: $(STAMP)
	$(PY) -m world.pretrain --output world/shapes-sdxl

# Rebuild the flow-matching world's base model (world/shapes-sd3: an SD3 MMDiT on shapes-sdxl's VAE and
# text encoders, so shapes-sdxl must be in place): seeded; settings and timings land in its build.json.
world-model-flow: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m world.pretrain --family sd3 --output world/shapes-sd3

clean:
	rm -rf $(VENV) demo-output bench-output fidelity-output fidelity-flow-output fidelity-full-output reward-demo-output

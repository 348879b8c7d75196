# The two commands of the README (`make train`, `make test`) create the environment when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Users get the newest torch (the CUDA build on Linux). CI machines (CI=true) have no GPU and
# take the CPU build instead; set TORCH_SPEC to choose another.
TORCH_SPEC ?= $(if $(CI),torch==2.13.0,torch)
ARGS ?=
# pytest-xdist workers of `make test-gpu`: Triton compiles each new shape on the CPU, so the
# suite scales with cores; each worker holds its own CUDA context, hence the cap.
GPU_WORKERS ?= $(shell n=$$(nproc); echo $$(( n < 16 ? n : 16 )))
# `make test` runs one pytest-xdist worker per core (up to 8), each on one thread: most tests
# are small and single-threaded work, so on a 2-core CI machine this takes the suite from
# about 8 to about 5.5 minutes, where two workers of two threads each gained nothing.
TEST_WORKERS ?= $(shell n=$$(nproc); echo $$(( n < 8 ? n : 8 )))
PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS)

.PHONY: setup train test test-fast test-gpu lint bench tensorboard clean

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed  ## create .venv with memlab (editable) and the dev tools

train: setup  ## train the default model on MQAR; pass overrides as ARGS="model=transformer seed=1"
	$(PY) scripts/train.py $(ARGS)

test: setup  ## lint, then the full test suite (what CI runs)
	$(VENV)/bin/ruff check .
	$(PYTEST)

test-fast: setup  ## the suite without tests marked slow
	$(PYTEST) -m "not slow"

test-gpu: setup  ## the GPU conformance suite: random shapes per op and layer, seed in the header
	@$(PY) -c "import sys, torch; torch.cuda.is_available() or sys.exit('error: no CUDA device; make test-gpu checks the kernels on a GPU')"
	$(PY) -m pytest -m gpu tests/gpu -n $(GPU_WORKERS) --dist loadgroup $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup  ## kernel and layer timings (table + JSON)
	$(PY) scripts/bench.py $(ARGS)

tensorboard: setup
	$(VENV)/bin/tensorboard --logdir logs/

clean:  ## remove the environment (runs under logs/ are kept)
	rm -rf $(VENV)

# On a fresh clone: `make demo` runs the whole pipeline offline, `make test` the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# Nothing leaves the machine: no usage statistics from Prefect or DVC.
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export AWS_EC2_METADATA_DISABLED := true
# A cold temporary Prefect server can take a while on a busy 2-core machine.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo test bench mutants

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	alexnet run

test: install
	pytest

bench: install
	$(BIN)/pip install --quiet -e '.[bench]'
	# img2dataset brings the `dataclasses` backport (for Python 3.6). Prefect's temporary
	# server puts site-packages first on its path, where the backport would hide the
	# standard library's module and stop the server from starting: remove it.
	$(BIN)/pip uninstall --quiet --yes dataclasses
	python bench/cli.py
	python bench/pipeline.py
	python bench/download.py
	python bench/ledger.py
	python bench/rerun.py
	python bench/scale.py
	python bench/classes.py
	python bench/input_pipeline.py
	python bench/train_step.py
	# bench/gpu.py needs a GPU and JAX (pip install -e '.[jax]'): run it on one, see docs/benchmarks.md

# Breakages the tests must catch, each on a scratch copy with the tests that guard it, then
# cosmic-ray over the pure modules (docs/testing.md). Slow: the training tests train.
mutants: install
	$(BIN)/pip install --quiet -e '.[mutants]'
	python tests/mutants.py
	python tests/mutants.py --pure

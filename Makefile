# Thin wrappers around the commands in README.md.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
THREADS ?= 1

.PHONY: setup lab test test-fast train exercises bench clean

# A CPU build of torch is installed first (pinned), so that nothing later pulls a CUDA build.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/00_orientation.ipynb

test: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python -m pytest -n 2 --dist loadfile -q

test-fast: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python -m pytest -q -m "not slow" tests --ignore=tests/test_notebooks.py

train: $(STAMP)
	$(BIN)/python -m minids train --preset baseline

exercises: $(STAMP)
	$(BIN)/python -m minids exercises

bench: $(STAMP)
	$(BIN)/python -m minids bench baseline

clean:
	rm -rf $(VENV) .pytest_cache

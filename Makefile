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
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[course,dev,hf]'
	touch $(STAMP)

setup: $(STAMP)

# The file browser shows the whole course (notebooks/, exercises/, solutions/); chapter 00 opens first.
# JupyterLab refuses to run as root unless told; only then is the flag added.
LAB_FLAGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)
lab: $(STAMP)
	$(BIN)/jupyter lab $(LAB_FLAGS) --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks/00_orientation.ipynb

# The whole suite: unit tests, exercise checks, and strict nbval over the lessons and solutions
# (two workers; a notebook's cells stay in one worker's kernel).
NBVAL := --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 900
test: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python -m pytest tests notebooks solutions $(NBVAL) -n 2 --dist loadfile -q

test-fast: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python -m pytest tests -q -m "not slow"

train: $(STAMP)
	$(BIN)/python -m minids train --preset baseline

exercises: $(STAMP)
	$(BIN)/python -m minids exercises

bench: $(STAMP)
	$(BIN)/python -m minids bench baseline

clean:
	rm -rf $(VENV) .pytest_cache

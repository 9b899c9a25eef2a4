# Thin wrappers around the commands in README.md.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
THREADS ?= 1

.PHONY: setup lab test test-fast test-notebooks test-portability test-portability-ci train exercises bench slides clean

# A CPU build of torch is installed first (pinned), so that nothing later pulls a CUDA build.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[course,dev,hf,data]'
	touch $(STAMP)

setup: $(STAMP)

# The file browser shows the whole course (notebooks/, exercises/, solutions/); chapter 00 opens first.
# JupyterLab refuses to run as root unless told; only then is the flag added.
LAB_FLAGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)
lab: $(STAMP)
	$(BIN)/jupyter lab $(LAB_FLAGS) --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks/00_orientation.ipynb

# The whole suite: unit tests, exercise checks, and strict nbval over the lessons and solutions
# (two workers; a notebook's cells stay in one worker's kernel) -- then the portability pass.
NBVAL   := --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 900
PYTEST  := OMP_NUM_THREADS=$(THREADS) $(BIN)/python -m pytest -p no:cacheprovider
NB      ?= notebooks solutions
test: $(STAMP)
	$(PYTEST) tests $(NB) $(NBVAL) -n 2 --dist loadfile -q
	$(MAKE) --no-print-directory test-portability-ci

test-fast: $(STAMP)
	$(PYTEST) tests/package -q -m "not slow" -n 2

# Any notebooks under nbval, e.g. `ATEN_CPU_CAPABILITY=avx2 make test-notebooks NB=notebooks/04_moe.ipynb`.
test-notebooks: $(STAMP)
	$(PYTEST) $(NB) $(NBVAL) -n 2 --dist loadfile -q

# Portability: a learner's CPU rounds floats differently. The lessons and solutions pass again under
# two other CPU kernel paths of PyTorch (ATEN_CPU_CAPABILITY): `test-portability` runs everything under
# each; CI's pass (`test-portability-ci`) gives one worker avx2 and the other default, so every notebook
# runs once more under one of them (a failure's report names the worker: gw0 = avx2, gw1 = default).
CAPS    ?= avx2 default
test-portability: $(STAMP)
	@set -e; for cap in $(CAPS); do echo "== lessons and solutions under ATEN_CPU_CAPABILITY=$$cap"; \
	    ATEN_CPU_CAPABILITY=$$cap $(PYTEST) $(NB) $(NBVAL) -n 2 --dist loadfile -q; done

test-portability-ci: $(STAMP)
	@echo "== lessons and solutions again: worker gw0 under ATEN_CPU_CAPABILITY=avx2, gw1 under =default"
	$(PYTEST) $(NB) $(NBVAL) --dist loadfile -q \
	    --tx popen//env:ATEN_CPU_CAPABILITY=avx2 --tx popen//env:ATEN_CPU_CAPABILITY=default

train: $(STAMP)
	$(BIN)/python -m minids train --preset baseline

exercises: $(STAMP)
	$(BIN)/python -m minids exercises

bench: $(STAMP)
	$(BIN)/python -m minids bench baseline

# Lecture slides: one reveal.js deck per lesson in build/slides/ (start at build/slides/index.html),
# viewable offline: reveal.js, MathJax, require.js and jQuery come once from the npm registry (needs npm).
SLIDES  ?= build/slides
$(SLIDES)/vendor/.installed:
	npm install --prefix $(SLIDES)/vendor --no-save --no-audit --no-fund --loglevel=error \
		reveal.js@4.6.1 mathjax@2.7.9 requirejs@2.3.7 jquery@3.7.1
	touch $@

slides: $(STAMP) $(SLIDES)/vendor/.installed
	$(BIN)/python -m minids.slides --out $(SLIDES) notebooks/*.ipynb

clean:
	rm -rf $(VENV) .pytest_cache

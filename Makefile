# Thin wrappers around the commands in README.md.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
THREADS ?= 1

.PHONY: setup lab test test-fast test-notebooks test-portability train exercises bench slides clean

# torch is installed first (pinned), so that nothing later pulls another build. Where pip's default index
# serves a CUDA build (PyPI on Linux), `make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu`
# takes PyTorch's CPU build instead.
TORCH_INDEX ?=
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e '.[course,dev,hf,data]'
	touch $(STAMP)

setup: $(STAMP)

# The file browser shows the whole course (notebooks/, exercises/, solutions/); chapter 00 opens first.
# JupyterLab refuses to run as root unless told; only then is the flag added.
LAB_FLAGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)
lab: $(STAMP)
	$(BIN)/jupyter lab $(LAB_FLAGS) --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks/00_orientation.ipynb

# The whole suite in one pass: unit tests, exercise checks, and strict nbval over the lessons and
# solutions (two workers; a notebook's cells stay in one worker's kernel). The notebooks' kernels run
# under CPU kernel paths other than this machine's own (conftest.py: ATEN_CPU_CAPABILITY alternates
# avx2 / default by position), so an output that depends on float rounding fails here, not on a
# learner's laptop; a failing cell's report names the path to reproduce it with.
NBVAL   := --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 900
PYTEST  := OMP_NUM_THREADS=$(THREADS) $(BIN)/python -m pytest -p no:cacheprovider
NB      ?= notebooks solutions
TEST_CAPS ?= avx2 default
test: $(STAMP)
	MINIDS_NB_CPU_CAPS="$(TEST_CAPS)" $(PYTEST) tests $(NB) $(NBVAL) -n 2 --dist loadfile -q

test-fast: $(STAMP)
	$(PYTEST) tests/package -q -m "not slow" -n 2

# Any notebooks under nbval, e.g. `ATEN_CPU_CAPABILITY=avx2 make test-notebooks NB=notebooks/04_moe.ipynb`.
test-notebooks: $(STAMP)
	$(PYTEST) $(NB) $(NBVAL) -n 2 --dist loadfile -q

# Before committing a notebook: the lessons and solutions under this machine's own kernels and under
# each of CAPS for every notebook (make test gives each notebook one of them).
CAPS    ?= avx2 default
test-portability: $(STAMP)
	@set -e; for cap in native $(CAPS); do echo "== lessons and solutions under ATEN_CPU_CAPABILITY=$$cap"; \
	    if [ $$cap = native ]; then $(PYTEST) $(NB) $(NBVAL) -n 2 --dist loadfile -q; \
	    else ATEN_CPU_CAPABILITY=$$cap $(PYTEST) $(NB) $(NBVAL) -n 2 --dist loadfile -q; fi; done

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

# tpipe: `make run` runs the pipeline on the built-in data; `make test` runs the test suite.
# Both create .venv and install what they need on first use.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of torch lies on this project's build machines; GPU users set TORCH_SPEC to their
# own build (or install torch into .venv first). A bare `torch` would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# Test files run TEST_WORKERS at a time (pytest-xdist), each file whole in one worker so that its
# module fixtures (a Ray cluster, a trained run) are built once. Most of an end-to-end test's wall
# time is Ray starting, polling and waiting, not CPU. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2

.PHONY: install run test test-heavy test-fast bench-tokenizer bench-data bench-model bench-train bench-quality ui clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/tpipe run $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-heavy: $(STAMP)
	$(PY) -m pytest -q -m heavy $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not e2e and not slow" $(PYTEST_ARGS)

bench-tokenizer: $(STAMP)
	$(PY) bench/tokenizer.py

bench-data: $(STAMP)
	$(PY) bench/data.py

bench-model: $(STAMP)
	$(PY) bench/model.py

bench-train: $(STAMP)
	$(PY) bench/train.py

bench-quality: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(PY) bench/quality.py

ui: $(STAMP)
	$(VENV)/bin/tpipe ui

clean:
	rm -rf .tpipe .pytest_cache

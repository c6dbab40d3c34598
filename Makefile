# Every target installs what it needs first: system packages (apt), then a venv with lbsync.
# The demo gets only what the demo needs; the tests and benchmarks get everything.
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO_STAMP := $(VENV)/.demo-installed
TEST_STAMP := $(VENV)/.test-installed

.PHONY: deps demo-deps test unit demo bench bench-full lint clean

deps: $(TEST_STAMP)

demo-deps: $(DEMO_STAMP)

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(DEMO_STAMP): pyproject.toml tools/system-deps.sh
	./tools/system-deps.sh demo
	$(MAKE) $(VENV)/bin/python
	$(PY) -m pip install -q -e .
	touch $(DEMO_STAMP)

$(TEST_STAMP): pyproject.toml tools/system-deps.sh
	./tools/system-deps.sh test
	$(MAKE) $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[test]'
	touch $(TEST_STAMP) $(DEMO_STAMP)

test: deps
	$(PY) -m pytest

unit: deps
	$(PY) -m pytest tests/unit

demo: demo-deps
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" ./lab/demo.sh

bench: deps  # the benchmarks build their LBs with the test kit (tests/kit)
	PYTHONPATH="$(CURDIR):$(CURDIR)/tests" $(PY) bench/run.py --quick

bench-full: deps
	PYTHONPATH="$(CURDIR):$(CURDIR)/tests" $(PY) bench/run.py --full

lint: deps
	$(VENV)/bin/ruff check lbsync tests bench lab
	$(VENV)/bin/mypy lbsync

clean:
	rm -rf $(VENV) .pytest_cache

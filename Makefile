# Every target installs what it needs first: system packages (apt), then a venv with lbsync.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: deps test unit demo bench bench-full lint clean

deps: $(STAMP)

$(STAMP): pyproject.toml tools/system-deps.sh
	./tools/system-deps.sh
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: deps
	$(PY) -m pytest

unit: deps
	$(PY) -m pytest tests/unit

demo: deps
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

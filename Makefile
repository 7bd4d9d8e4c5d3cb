# `make demo` and `make test` work on a fresh machine: they create .venv, install the CPU build of torch
# explicitly (an unpinned torch would download a multi-GB CUDA build), then the project.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml constraints-ci.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints-ci.txt -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/vlm-lens demo

# The layers contract first (seconds), then the suite; pytest's own -q (pyproject) ends with the "N passed" line.
test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest tests

bench: $(STAMP)
	$(BIN)/pip install -q -c constraints-ci.txt -e ".[bench]"
	$(BIN)/python benchmarks/trace_overhead.py

clean:
	rm -rf $(VENV) vlm_lens_demo

# kd-depth: two commands for a fresh machine — `make demo` (the main job) and `make test`.
# Both create the virtual environment first when it is missing or out of date.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kd-depth-setup
DEMO_ARGS ?=

.PHONY: setup demo demo-fast test lint bench clean help

help:
	@echo "make demo   run the whole pipeline on the built-in synthetic world (report in demo_output/)"
	@echo "make test   ruff + the full test suite"
	@echo "make setup  create .venv with pinned dependencies (run by the two above when needed)"

setup: $(STAMP)

$(STAMP): requirements.txt setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.txt
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)
	@echo "kd-depth environment ready in $(VENV)"

demo: setup
	$(BIN)/kd-depth demo $(DEMO_ARGS)

demo-fast: setup
	$(BIN)/kd-depth demo --fast $(DEMO_ARGS)

lint: setup
	$(BIN)/ruff check .

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n auto --dist loadfile $(PYTEST_ARGS)

clean:
	rm -rf build install log .pytest_cache demo_output

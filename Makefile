# `make run` and `make test` bootstrap .venv themselves (plain pip; torch comes from this
# machine's local wheel files where pip has them).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RECIPE ?= default
OUT ?= runs/$(RECIPE)
# Two pytest-xdist workers: the export tests are single-threaded lowering passes.
PYTEST_WORKERS ?= 2

.PHONY: run test test-full venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,smp]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/aspp-edge run --recipe $(RECIPE) --out $(OUT)

# The fast tier: every unit, backend and stage on tiny models (<= 10 minutes on 2 cores).
test: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# The full tier (what CI runs): the fast tier plus the tests marked `full`.
test-full: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -m "not slow" --durations=25 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache

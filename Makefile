# Set-up and everyday commands. Everything installs into ./.venv from scratch.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
DEMO_OUT ?= demo-out

.PHONY: install demo test lint bench clean

$(BIN)/.installed: pyproject.toml requirements-pinned.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-pinned.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

install: $(BIN)/.installed

## demo: fresh clone -> venv -> corpus -> a prior trained here -> score -> edit -> report
demo: install
	$(BIN)/tokedit demo --out $(DEMO_OUT)

## test: the whole test suite (what CI runs). The tests run in one worker process of
## pytest-xdist (-n 1): a test that kills its process (Ray ends a driver that touches it
## after ray.shutdown()) is reported as a failed test, with the Ray driver's log, and the
## suite goes on in a new worker, so the summary line is always printed.
test: install
	$(BIN)/ruff check tokedit tests benchmarks
	$(BIN)/python -m pytest -q -n 1 --durations=10

lint: install
	$(BIN)/ruff check tokedit tests benchmarks
	$(BIN)/ruff format --check tokedit tests benchmarks

bench: install
	$(BIN)/python benchmarks/score.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache

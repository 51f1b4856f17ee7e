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

## test: the whole test suite (what CI runs)
test: install
	$(BIN)/ruff check tokedit tests benchmarks
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check tokedit tests benchmarks
	$(BIN)/ruff format --check tokedit tests benchmarks

bench: install
	$(BIN)/python benchmarks/score.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache

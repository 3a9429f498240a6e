# One virtualenv for everything; `make demo` and `make test` create it on first use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint unit bench clean

$(BIN)/oee-stream: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/oee-stream

demo: install
	$(BIN)/oee-stream demo

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

bench: install
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/engine.py
	$(BIN)/python benchmarks/polled_plant.py
	$(BIN)/python benchmarks/warm_start.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

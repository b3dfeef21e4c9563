# The two commands of the README: `make demo` (set up + main job) and `make test` (set up + whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

demo: $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	$(BIN)/vistok demo --out vistok-demo

test: $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pytest -q

bench: $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python benchmarks/bench_encode.py
	$(BIN)/python benchmarks/bench_count.py

clean:
	rm -rf $(VENV) vistok-demo .pytest_cache .hypothesis

# The two README commands: `make demo` (main job) and `make test` (the suite CI runs).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
RESULTS ?= results/demo

$(BIN)/emmil: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,dashboard]'  # dashboard: tests/harness/test_dashboards.py runs optuna-dashboard
	touch $(BIN)/emmil

install: $(BIN)/emmil

demo: $(BIN)/emmil
	$(BIN)/emmil data synth --dataset thumos14 --out data/synth-thumos14-quick --preset quick
	$(BIN)/emmil ablate references --dataset thumos14 --data-dir data/synth-thumos14-quick --preset quick --seeds 2 --results $(RESULTS)

test: $(BIN)/emmil
	$(BIN)/python -m pytest -q

bench: $(BIN)/emmil
	$(BIN)/python bench/run_all.py

.PHONY: install demo test bench

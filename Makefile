# Two commands do all set-up on a fresh machine (README): `make run` and `make test`.
# Both create .venv and install what they need, idempotently (a stamp file skips a second install).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DURATION ?= 60

.PHONY: run test lint unit integration bench clean install

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, from the pin (constraints.txt): a CPU build here; see README "Install".
	$(BIN)/python -m pip install -q -c constraints.txt "torch==2.13.0"
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,local]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/streamrl demo --duration $(DURATION)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q -ra

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

bench: $(STAMP)
	$(BIN)/python bench/join_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache

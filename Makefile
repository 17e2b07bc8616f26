# Two commands do all set-up: `make demo` and `make test`. Both create the project-local environment
# (.venv, made by uv from uv.lock) when it is missing or older than pyproject.toml/uv.lock.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
STAMP := $(VENV)/.fth-installed

.PHONY: env demo test lint format bench clean postgres label-studio

env: $(STAMP)

$(STAMP): pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --frozen --extra dev --python $(PYTHON)
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fth demo

test: $(STAMP) postgres label-studio
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

# tests/test_label_studio.py starts a real Label Studio on loopback. It is ~800 MB and pins its own Django stack, so it
# gets its own locked environment (tools/label-studio/uv.lock) in tools/label-studio/.venv, never fth's. An empty,
# migrated database is kept there as a template (`label-studio version` applies the migrations and exits), so each
# test session's server skips the migrations (about half its start-up).
LS_STAMP := tools/label-studio/.venv/.fth-installed
LS_TEMPLATE := tools/label-studio/.venv/fth-template

label-studio: $(LS_STAMP)

$(LS_STAMP): tools/label-studio/pyproject.toml tools/label-studio/uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --project tools/label-studio --frozen --python $(PYTHON)
	rm -rf $(LS_TEMPLATE) && mkdir -p $(LS_TEMPLATE)
	cd $(LS_TEMPLATE) && LABEL_STUDIO_BASE_DATA_DIR=$$PWD LATEST_VERSION_CHECK=false ../bin/label-studio version >/dev/null
	@touch $@

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
	rm -rf $(VENV) tools/label-studio/.venv .pytest_cache .ruff_cache

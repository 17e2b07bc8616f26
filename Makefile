# Two commands do all set-up: `make demo` and `make test`. Both create the project-local environment
# (.venv, made by uv from uv.lock) when it is missing or older than pyproject.toml/uv.lock.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
STAMP := $(VENV)/.fth-installed

.PHONY: env demo test lint format bench clean

env: $(STAMP)

$(STAMP): pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --frozen --extra dev --python $(PYTHON)
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fth demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

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

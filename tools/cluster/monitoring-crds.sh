#!/usr/bin/env bash
# monitoring-crds.sh - the Prometheus Operator's CRDs for the kinds the chart makes (ServiceMonitor,
# PodMonitor, PrometheusRule), from the prometheus-operator Go module (example/prometheus-operator-crd),
# applied to the cluster of $KUBECONFIG. So the chart's monitoring objects are created and read back as on
# a cluster with kube-prometheus-stack; no Prometheus Operator runs (tests/support/podmonitor.py turns the
# PodMonitor into the scrape job the operator would generate).
# env: KUBECTL, KUBECONFIG.
set -euo pipefail
VERSION=v0.85.0 # the newest release of the root module the Go module proxy lists here
dir=$(go mod download -json "github.com/prometheus-operator/prometheus-operator@$VERSION" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
for kind in servicemonitors podmonitors prometheusrules; do
  "$KUBECTL" apply --server-side --force-conflicts -f "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml" >/dev/null
done
# polled, not `kubectl wait --for=condition=Established`: that fails at once ("status.conditions accessor
# error: <nil>") on a CRD whose status the API server has not written yet, as a cold machine's CI run met
# (and tidb-operator#1511 before it)
established() {
  [ "$("$KUBECTL" get "crd/$1" -o jsonpath='{.status.conditions[?(@.type=="Established")].status}' 2>/dev/null)" = True ]
}
for kind in servicemonitors podmonitors prometheusrules; do
  crd=$kind.monitoring.coreos.com deadline=$((SECONDS + 60))
  until established "$crd"; do
    [ $SECONDS -lt $deadline ] || { echo "monitoring-crds.sh: crd/$crd not Established in 60 s" >&2; exit 1; }
    sleep 0.5
  done
done

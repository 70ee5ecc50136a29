#!/usr/bin/env bash
# kueue.sh OUTDIR - Kueue's controller built from its Go module into OUTDIR, with its Helm chart copied out of
# the same module (charts/kueue), for the test cluster's queues. Its own folder, named by its version (the
# Makefile's KUEUE_DIR), so that adding or moving Kueue never rebuilds the Kubernetes components. Once per
# machine and version: about 3 minutes cold on 2 cores.
set -euo pipefail
VERSION=v0.17.0 # sigs.k8s.io/kueue
out=${1:?usage: kueue.sh OUTDIR}
if [ -f "$out/.complete" ]; then
  echo "kueue.sh: up to date: $out"
  exit 0
fi
command -v go >/dev/null || { echo "kueue.sh: ERROR: Go is needed (Kueue is built from the Go module proxy)" >&2; exit 1; }
rm -rf "$out.tmp" && mkdir -p "$out.tmp"
t0=$SECONDS
export GOFLAGS=-buildvcs=false CGO_ENABLED=0 GOTOOLCHAIN=local
GOBIN="$out.tmp" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kueue/cmd/kueue@$VERSION" ||
  { echo "kueue.sh: ERROR: go install sigs.k8s.io/kueue/cmd/kueue@$VERSION failed" >&2; exit 1; }
moddir=$(go mod download -json "sigs.k8s.io/kueue@$VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
cp -r "$moddir/charts/kueue" "$out.tmp/chart" && chmod -R u+w "$out.tmp/chart"
touch "$out.tmp/.complete"
rm -rf "$out" && mv "$out.tmp" "$out"
echo "kueue.sh: Kueue $VERSION in $((SECONDS - t0)) s: $out"

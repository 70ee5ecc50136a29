#!/usr/bin/env bash
# kuberay-crds.sh OUTDIR - KubeRay's own CRDs (config/crd/bases of github.com/ray-project/kuberay/ray-operator
# at the version the test cluster runs, tools/cluster/versions.sh), from the Go module proxy, for the tests
# that dry-run the operator's RayJobs against a real KubeRay schema. Once per version; then instant.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=cluster/versions.sh
. "$HERE/cluster/versions.sh"
OUT=${1:?usage: kuberay-crds.sh OUTDIR}
if [ -f "$OUT/ray.io_rayjobs.yaml" ] && [ -f "$OUT/ray.io_rayclusters.yaml" ]; then exit 0; fi
command -v go >/dev/null || { echo "kuberay-crds.sh: go not found (the Go toolchain fetches KubeRay's module)" >&2; exit 1; }
dir=$(go mod download -json "github.com/ray-project/kuberay/ray-operator@$KUBERAY_VERSION" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -f "$dir/config/crd/bases/ray.io_rayjobs.yaml" ] ||
  { echo "kuberay-crds.sh: no CRDs in ray-operator@$KUBERAY_VERSION (module folder: ${dir:-none})" >&2; exit 1; }
mkdir -p "$OUT.tmp"
cp "$dir"/config/crd/bases/ray.io_rayjobs.yaml "$dir"/config/crd/bases/ray.io_rayclusters.yaml "$OUT.tmp/"
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
echo "kuberay-crds.sh: KubeRay $KUBERAY_VERSION's CRDs in $OUT"

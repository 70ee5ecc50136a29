#!/usr/bin/env bash
# kuberay-crds.sh OUTDIR - KubeRay's own CRDs (config/crd/bases of github.com/ray-project/kuberay/ray-operator
# at the version the test cluster runs, tools/cluster/versions.sh), for the tests that dry-run the operator's
# RayJobs against a real KubeRay schema: the module's zip from the Go module proxy, by curl (no Go needed).
# Once per version; then instant.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=cluster/versions.sh
. "$HERE/cluster/versions.sh"
OUT=${1:?usage: kuberay-crds.sh OUTDIR}
if [ -f "$OUT/ray.io_rayjobs.yaml" ] && [ -f "$OUT/ray.io_rayclusters.yaml" ]; then exit 0; fi
PROXY=${GOPROXY:-https://proxy.golang.org}
PROXY=${PROXY%%,*}
url="$PROXY/github.com/ray-project/kuberay/ray-operator/@v/$KUBERAY_VERSION.zip"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
curl -fsSL --retry 3 -o "$tmp/module.zip" "$url" || { echo "kuberay-crds.sh: cannot fetch $url" >&2; exit 1; }
python3 - "$tmp/module.zip" "$tmp/out" <<'PY'
import sys, zipfile, pathlib
z, out = zipfile.ZipFile(sys.argv[1]), pathlib.Path(sys.argv[2])
out.mkdir()
for name in ("ray.io_rayjobs.yaml", "ray.io_rayclusters.yaml"):
    (member,) = [m for m in z.namelist() if m.endswith(f"/config/crd/bases/{name}")]
    (out / name).write_bytes(z.read(member))
PY
rm -rf "$OUT" && mkdir -p "$(dirname "$OUT")" && mv "$tmp/out" "$OUT"
echo "kuberay-crds.sh: KubeRay $KUBERAY_VERSION's CRDs in $OUT (from $url)"

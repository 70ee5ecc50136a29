#!/usr/bin/env bash
# preflight.sh - can this machine run the test cluster? Says plainly why not (and exits 1), else nothing.
# make test runs it before the cluster's tests; the cluster needs what a node needs: root, network
# namespaces and veth pairs, cgroups it may write, overlayfs, and the Go toolchain to build Kubernetes.
set -uo pipefail
why=()
[ "$(id -u)" = 0 ] || why+=("not root (a kubelet, containerd and network namespaces need root; make test runs as $(id -un))")
command -v go >/dev/null || why+=("no Go toolchain on PATH (Kubernetes, KubeRay and CoreDNS are built from the Go module proxy)")
if [ "$(id -u)" = 0 ]; then
  ns=dt-preflight-$$
  if ip netns add "$ns" 2>/dev/null; then
    ip -n "$ns" link add dt-pf-a type veth peer name dt-pf-b 2>/dev/null || why+=("no veth pairs (ip link add type veth failed)")
    ip netns delete "$ns"
  else
    why+=("no network namespaces (ip netns add failed)")
  fi
  [ -w /sys/fs/cgroup/memory ] || [ -w /sys/fs/cgroup/cgroup.subtree_control ] ||
    why+=("/sys/fs/cgroup is not writable (the kubelet makes the pods' cgroups)")
  grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || why+=("no overlayfs (containerd's snapshotter)")
fi
if [ ${#why[@]} -gt 0 ]; then
  echo "make test: this machine cannot run the test cluster (tests/e2e):" >&2
  printf '  - %s\n' "${why[@]}" >&2
  echo "  make test E2E=0 runs the rest and says that the cluster's tests did not run." >&2
  exit 1
fi

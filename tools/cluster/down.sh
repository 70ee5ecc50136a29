#!/usr/bin/env bash
# down.sh - stop the test cluster and remove all of it: every process it started, every container, its
# mounts, its network namespace and veth pair, its state and the kubeconfig. The builds and the nodes'
# image stores (images only, nothing running) stay in the cache. Safe to run when nothing (or half of
# it) is up.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"
[ "$(id -u)" = 0 ] || die "needs root, as up.sh did"

stop() { # NAME: TERM, then KILL after 10 s
  local f=$RUN/$1.pid
  [ -f "$f" ] || return 0
  local pid; pid=$(cat "$f")
  if ours "$pid"; then  # not a pid the system gave to another process since the cluster was killed
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$f"
}

# the kubelets first (they would restart what we stop), then every container and its shim
stop kube-proxy
for i in 0 1; do stop "kubelet-$i"; done
for i in 0 1; do
  sock=$RUN/containerd-$i.sock
  clear_containers "$sock"
  stop "containerd-$i"
  # shims whose containerd is gone (they outlive it by design)
  pkill -9 -f "containerd-shim-runc-v2 .*-address $sock" 2>/dev/null
done
for d in seaweedfs kube-scheduler kube-controller-manager kube-apiserver etcd; do stop "$d"; done

# mounts under the state, the runtime folders and the nodes' stores (pods' volumes, overlay snapshots,
# shm), and the pods' network namespaces
for d in "$STATE" "$RUN" "$NODE_STORES"; do
  [ -d "$d" ] || continue
  findmnt -rn -o TARGET | grep -F "$d/" | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
done
if ip netns list 2>/dev/null | grep -qw "$NETNS"; then
  ip netns delete "$NETNS"
fi
ip link delete "$VETH_HOST" 2>/dev/null
# the pods' namespaces containerd made under /run/netns
for ns in $(ip netns list 2>/dev/null | awk '/^cni-/{print $1}'); do ip netns delete "$ns" 2>/dev/null; done

# the kubelets' cgroup roots (empty now: directories only, deepest first)
for i in 0 1; do
  for h in /sys/fs/cgroup/*/disney-train-$i; do
    [ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} + 2>/dev/null
  done
done
if findmnt -rn -o TARGET | grep -qF "$STATE/"; then
  die "mounts remain under $STATE (findmnt); not removing it"
fi
rm -rf "$STATE" "$RUN" "$KUBECONFIG_OUT"
# the stores keep images only: the pods' folders go (containerd would drop them as orphans anyway)
for d in "$NODE_STORES"/containerd-*/io.containerd.grpc.v1.cri; do
  [ -d "$d" ] && rm -rf "$d/sandboxes" "$d/containers"
done
log "down: nothing of the cluster runs or remains (builds and the nodes' image stores stay in $(dirname "$NODE_STORES"))"

# common.sh - the test cluster's names, addresses and helpers, sourced by up.sh, images.sh, kuberay.sh
# and down.sh.
# shellcheck source=versions.sh
. "$(dirname "${BASH_SOURCE[0]}")/versions.sh"
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
NETNS=disney-train
VETH_HOST=dt-host
VETH_NODE=dt-node
# a /30 of the project's own between this host and the cluster's namespace; pods and Services use ranges
# that appear nowhere else on the machine (the host's resolver is 10.255.255.53)
HOST_IP=10.201.0.1
NODE_IP=10.201.0.2
NODE=disney-train-node
GPU_NODE=disney-train-gpu
POOL_LABEL=disneytrain.dev/pool
POD_CIDR=10.88.0.0/16
SERVICE_CIDR=10.0.0.0/24
API_SERVICE_IP=10.0.0.1
DNS_SERVICE_IP=10.0.0.10
S3_PORT=8333
FAKE_GPUS=4
STATE=${CLUSTER_STATE:-/var/lib/disney-train/cluster}
RUN=/run/disney-train
# The nodes' image stores (each containerd's root: its images, unpacked): kept across make cluster-down,
# like the builds, so a cluster comes up again without importing gigabytes. Nothing in them runs.
NODE_STORES=${CLUSTER_CACHE:-${DISNEY_TRAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/disney-train}/cluster}/node-stores
CONTAINERD_SOCK=${CONTAINERD_SOCK:-$RUN/containerd-0.sock}
KUBECONFIG_OUT=${KUBECONFIG_OUT:-$REPO/.cluster/kubeconfig}
ADMIN_KUBECONFIG=$STATE/pki/admin.kubeconfig
KUBECTL=${KUBECTL:-kubectl}
# Kueue's version: the one tools/cluster/kueue.sh builds (its folder's name says it too)
kueue_version() { sed -n 's/^VERSION=\([^ ]*\).*/\1/p' "$REPO/tools/cluster/kueue.sh"; }

die() { echo "cluster: ERROR: $*" >&2; exit 1; }
log() { echo "cluster: $*" >&2; }
inns() { nsenter --net="/run/netns/$NETNS" -- "$@"; }
kc() { "$KUBECTL" --kubeconfig "$ADMIN_KUBECONFIG" "$@"; }

# S3 keys of the cluster's SeaweedFS: made once per cluster, kept beside its data (mode 600), and put
# in the e2e's Secret from there; never in a manifest or on a command line.
s3_keys() {
  local f=$STATE/s3/keys
  if [ ! -s "$f" ]; then
    mkdir -p "$STATE/s3"
    (umask 077 && printf 'S3_ACCESS_KEY=%s\nS3_SECRET_KEY=%s\n' "$(openssl rand -hex 10)" "$(openssl rand -hex 20)" >"$f")
  fi
  set -a && . "$f" && set +a
}

# ours PID: that process runs in the cluster's network namespace, as every daemon start() began does; a
# pid file a killed cluster left may name a pid the system has given to another process since
ours() {
  local ns; ns=$(stat -Lc %i "/run/netns/$NETNS" 2>/dev/null) || return 1
  [ "$(stat -Lc %i "/proc/$1/ns/net" 2>/dev/null)" = "$ns" ]
}

alive() { [ -f "$RUN/$1.pid" ] && ours "$(cat "$RUN/$1.pid")"; }

# leftovers: something of a cluster is here (its runtime folder, state or namespace)
leftovers() { [ -d "$RUN" ] || [ -d "$STATE" ] || ip netns list 2>/dev/null | grep -qw "$NETNS"; }

# start NAME CMD...: a daemon in the cluster's network namespace, its own session, its log in
# $STATE/log/NAME.log; left alone when it already runs
start() {
  local name=$1; shift
  alive "$name" && return 0
  mkdir -p "$STATE/log" "$RUN"
  nsenter --net="/run/netns/$NETNS" -- setsid "$@" >>"$STATE/log/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
}

# wait_for WHAT SECONDS CMD...: until CMD succeeds, or fail naming WHAT and the logs to read
wait_for() {
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    for pidf in "$RUN"/*.pid; do
      [ -f "$pidf" ] || continue
      local n; n=$(basename "$pidf" .pid)
      ours "$(cat "$pidf")" || die "$n exited while waiting for $what; its log: $STATE/log/$n.log
$(tail -n 15 "$STATE/log/$n.log" 2>/dev/null)"
    done
    [ $SECONDS -lt $deadline ] || die "$what not ready in $secs s (logs: $STATE/log/)"
    sleep 0.5
  done
}

healthy() {
  [ -f "$ADMIN_KUBECONFIG" ] || return 1
  for d in etcd kube-apiserver kube-controller-manager kube-scheduler containerd-0 kubelet-0 containerd-1 kubelet-1 kube-proxy seaweedfs; do
    alive "$d" || return 1
  done
  kc get --raw /readyz >/dev/null 2>&1
}

# clear_containers SOCK: every container of that containerd killed and deleted (the pods of a cluster
# gone; its images stay). containerd's garbage collection then drops their snapshots.
clear_containers() {
  local sock=$1 t c
  [ -S "$sock" ] || return 0
  for t in $(ctr --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
    ctr --address "$sock" -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1
  done
  sleep 1
  for t in $(ctr --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
    ctr --address "$sock" -n k8s.io tasks delete -f "$t" >/dev/null 2>&1
  done
  for c in $(ctr --address "$sock" -n k8s.io containers ls -q 2>/dev/null); do
    ctr --address "$sock" -n k8s.io containers delete "$c" >/dev/null 2>&1
  done
  return 0
}

#!/usr/bin/env bash
# up.sh - a real single-node Kubernetes cluster on this machine, in a network namespace of its own.
#
#   etcd, kube-apiserver (Node,RBAC authorization), kube-controller-manager, kube-scheduler; two nodes,
#   each a kubelet on its own containerd with runc: $NODE (the system pool) and $GPU_NODE (the GPU
#   pool: NVIDIA's taint and fake nvidia.com/gpu); the bridge CNI, kube-proxy (iptables), CoreDNS,
#   KubeRay's operator, Kueue (its own chart), the Prometheus Operator's CRDs, the images (images.sh), and
#   SeaweedFS as the cluster's S3.
#
# Everything runs inside the network namespace $NETNS: the node is $NODE_IP, this host reaches it over
# a veth pair from $HOST_IP, and nothing in it has a route further than this host. Idempotent: a healthy
# cluster is left as it is; what an unhealthy one left is removed first. tools/cluster/down.sh stops and
# removes all of it.
#
# env: CLUSTER_BIN (build.sh's folder), KUEUE_DIR (kueue.sh's), HELM, ETCD (the etcd binary), WEED (SeaweedFS), KUBECTL, CLUSTER_STATE
#      (default /var/lib/disney-train/cluster), KUBECONFIG_OUT (default .cluster/kubeconfig)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"

[ "$(id -u)" = 0 ] || die "the test cluster needs root (a kubelet, containerd, network namespaces)"
for v in CLUSTER_BIN KUEUE_DIR HELM ETCD WEED KUBECTL; do [ -n "${!v:-}" ] || die "$v is not set (make cluster sets it)"; done
[ -x "$CLUSTER_BIN/kube" ] || die "no $CLUSTER_BIN/kube: run tools/cluster/build.sh first (make cluster does)"
for t in containerd runc ctr iptables conntrack nsenter openssl; do
  command -v $t >/dev/null || die "'$t' is missing: tools/cluster/system-deps.sh installs it"
done
[ -x /usr/lib/cni/bridge ] || die "no CNI plugins in /usr/lib/cni (Debian's containernetworking-plugins)"

t0=$SECONDS

network() {
  if ! ip netns list | grep -qw "$NETNS"; then
    ip netns add "$NETNS"
    ip link add "$VETH_HOST" type veth peer name "$VETH_NODE"
    ip link set "$VETH_NODE" netns "$NETNS"
    ip addr add "$HOST_IP/30" dev "$VETH_HOST" && ip link set "$VETH_HOST" up
    inns ip addr add "$NODE_IP/30" dev "$VETH_NODE"
    inns ip link set "$VETH_NODE" up && inns ip link set lo up
    # no default route: an address beyond this host and the namespace (say, the host's resolver in
    # /etc/resolv.conf) is unreachable at once, and no packet heads for it
  fi
  # the pod network is reachable from this host, as from a node (a Prometheus here scrapes pods by their IPs)
  ip route replace "$POD_CIDR" via "$NODE_IP" dev "$VETH_HOST"
  # Services from the node's own processes: the API server calls webhooks and aggregated APIs (Kueue's) at
  # their Service IPs. Without a route the connect fails (network unreachable) before kube-proxy's DNAT in
  # OUTPUT can send it on to the pod; with one, the DNAT'd packet is routed again, to the pod's bridge.
  inns ip route replace "$SERVICE_CIDR" dev "$VETH_NODE" src "$NODE_IP"
  inns sysctl -qw net.ipv4.ip_forward=1
  inns sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null ||
    log "note: net.bridge.bridge-nf-call-iptables is not settable in the namespace (host value kept)"
}

certs() {
  local p=$STATE/pki
  [ -f "$p/.complete" ] && return 0
  (
    cd "$p"
    ca() { openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$1" -keyout "$1.key" -out "$1.crt" 2>/dev/null; }
    crt() { # name CN O|- CA eku [SANs]
      local subj="/CN=$2"; [ "$3" = - ] || subj="$subj/O=$3"
      openssl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$1.key" -out "$1.csr" 2>/dev/null
      { echo "extendedKeyUsage=$5"; [ -z "${6:-}" ] || echo "subjectAltName=$6"; } >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA "$4.crt" -CAkey "$4.key" -CAcreateserial -days 3650 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    }
    ca server-ca && ca client-ca && ca front-proxy-ca
    crt apiserver kube-apiserver - server-ca serverAuth \
      "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$NODE_IP,IP:$API_SERVICE_IP"
    crt admin admin system:masters client-ca clientAuth
    crt kube-apiserver kube-apiserver - client-ca clientAuth
    crt controller-manager system:kube-controller-manager - client-ca clientAuth
    crt scheduler system:kube-scheduler - client-ca clientAuth
    crt kubelet-0 "system:node:$NODE" system:nodes client-ca clientAuth
    crt kubelet-1 "system:node:$GPU_NODE" system:nodes client-ca clientAuth
    crt kube-proxy system:kube-proxy - client-ca clientAuth
    # the aggregation layer's client (the API server proxying to Kueue's visibility API server)
    crt front-proxy-client front-proxy-client - front-proxy-ca clientAuth
    openssl genrsa -out sa.key 2048 2>/dev/null && openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    for who in admin controller-manager scheduler kubelet-0 kubelet-1 kube-proxy; do
      kubeconfig "$who" "https://$NODE_IP:6443" >"$who.kubeconfig"
    done
    touch .complete
  )
}

kubeconfig() { # who server
  local p=$STATE/pki
  cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: disney-train
  cluster: {server: "$2", certificate-authority: "$p/server-ca.crt"}
users:
- name: $1
  user: {client-certificate: "$p/$1.crt", client-key: "$p/$1.key"}
contexts:
- name: disney-train
  context: {cluster: disney-train, user: $1}
current-context: disney-train
EOF
}

control_plane() {
  local p=$STATE/pki
  start etcd "$ETCD" --name disney-train --data-dir "$STATE/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster disney-train=http://127.0.0.1:2380 --log-level warn
  wait_for "etcd" 30 inns curl -sf http://127.0.0.1:2379/health
  start kube-apiserver "$CLUSTER_BIN/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 --bind-address=0.0.0.0 --secure-port=6443 \
    --advertise-address="$NODE_IP" --service-cluster-ip-range="$SERVICE_CIDR" \
    --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" --client-ca-file="$p/client-ca.crt" \
    --kubelet-client-certificate="$p/kube-apiserver.crt" --kubelet-client-key="$p/kube-apiserver.key" \
    --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --kubelet-preferred-address-types=InternalIP \
    --allow-privileged=true --profiling=false --v=1 \
    --requestheader-client-ca-file="$p/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$p/front-proxy-client.crt" --proxy-client-key-file="$p/front-proxy-client.key"
  wait_for "kube-apiserver" 90 kc get --raw /readyz
  start kube-controller-manager "$CLUSTER_BIN/kube-controller-manager" \
    --kubeconfig="$p/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$p/controller-manager.kubeconfig" --authorization-kubeconfig="$p/controller-manager.kubeconfig" \
    --service-account-private-key-file="$p/sa.key" --root-ca-file="$p/server-ca.crt" \
    --cluster-signing-cert-file="$p/client-ca.crt" --cluster-signing-key-file="$p/client-ca.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" --use-service-account-credentials --leader-elect=false \
    --bind-address=127.0.0.1 --profiling=false --v=1
  cat >"$STATE/scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection: {kubeconfig: "$p/scheduler.kubeconfig"}
leaderElection: {leaderElect: false}
EOF
  start kube-scheduler "$CLUSTER_BIN/kube-scheduler" --config="$STATE/scheduler.yaml" \
    --authentication-kubeconfig="$p/scheduler.kubeconfig" --authorization-kubeconfig="$p/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --v=1
  # kubectl logs/exec: the apiserver's own client identity may talk to kubelets
  wait_for "RBAC bootstrap" 60 kc get clusterrole system:kubelet-api-admin
  kc create clusterrolebinding kube-apiserver-kubelet-admin --clusterrole=system:kubelet-api-admin \
    --user=kube-apiserver --dry-run=client -o yaml | kc apply -f - >/dev/null
}

# node NAME INDEX [TAINT]: containerd and a kubelet of their own for node NAME (state `-INDEX`). Both
# nodes share the cluster's bridge and address pool, so a pod reaches any other as on one network; each
# kubelet keeps its pods' cgroups under a root of its own (a kubelet removes pod cgroups it does not know).
node() {
  local name=$1 i=$2 taint=${3:-}
  local sock=$RUN/containerd-$i.sock cg=disney-train-$i pool=system
  [ -z "$taint" ] || pool=gpu
  mkdir -p "$NODE_STORES/containerd-$i" "$STATE/kubelet-$i"
  cat >"$STATE/containerd-$i.toml" <<EOF
version = 2
root = "$NODE_STORES/containerd-$i"
state = "$RUN/containerd-$i"
[grpc]
  address = "$sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:$PAUSE_VERSION"
  # this machine withholds CAP_SYS_RESOURCE even from root, so no process may lower its oom_score_adj
  # (the kubelet asks -998 for sandboxes): keep every container's at containerd's own or above
  restrict_oom_score_adj = true
  # containerd 2's default: any port is unprivileged inside a pod (CoreDNS binds 53 as a non-root user)
  enable_unprivileged_ports = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$(command -v runc)"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
EOF
  start "containerd-$i" containerd --config "$STATE/containerd-$i.toml"
  wait_for "containerd of $name" 30 ctr --address "$sock" version
  # the store's containers are a gone cluster's (down.sh could not ask a killed containerd to delete them)
  clear_containers "$sock"
  CONTAINERD_SOCK=$sock bash "$HERE/images.sh" base
  # the kubelet's cgroup root, in every cgroup v1 hierarchy (cpuset's values are not inherited in v1)
  local h
  for h in /sys/fs/cgroup/*/; do
    [ -e "${h}cgroup.procs" ] || continue
    mkdir -p "$h$cg"
    if [ -e "${h}cpuset.cpus" ]; then
      cat "${h}cpuset.cpus" >"$h$cg/cpuset.cpus" && cat "${h}cpuset.mems" >"$h$cg/cpuset.mems"
    fi
  done
  cat >"$STATE/kubelet-$i.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false          # this host is cgroup v1 (hybrid); the kubelet refuses it from 1.35 unless told
cgroupDriver: cgroupfs       # no systemd here, and containerd 1.6 cannot report its driver
cgroupRoot: /$cg
containerRuntimeEndpoint: unix://$sock
failSwapOn: false
address: $NODE_IP
port: $((10250 + 100 * i))
healthzPort: $((10248 + 100 * i))
readOnlyPort: 0
authentication: {anonymous: {enabled: false}, webhook: {enabled: true}, x509: {clientCAFile: "$STATE/pki/client-ca.crt"}}
authorization: {mode: Webhook}
clusterDNS: [$DNS_SERVICE_IP]
clusterDomain: cluster.local
resolvConf: "$STATE/resolv.conf"
# imported images cannot be pulled again: never collect them, evict only when the disk is truly full
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 200Mi, nodefs.available: 512Mi, nodefs.inodesFree: 1%, imagefs.available: 512Mi}
maxPods: 60
serializeImagePulls: false
# each kubelet removes the log folders of pods it does not know: the two keep theirs apart
podLogsDir: $STATE/pod-logs-$i
registerWithTaints: [$taint]
EOF
  start "kubelet-$i" "$CLUSTER_BIN/kubelet" --config="$STATE/kubelet-$i.yaml" \
    --kubeconfig="$STATE/pki/kubelet-$i.kubeconfig" --hostname-override="$name" --node-ip="$NODE_IP" \
    --root-dir="$STATE/kubelet-$i" --cert-dir="$STATE/kubelet-$i/pki" --node-labels="$POOL_LABEL=$pool" --v=1
  wait_for "node $name registered" 90 kc get node "$name"
}

nodes() {
  # the pods' resolver: none (pods resolve through CoreDNS, which forwards nowhere)
  echo "# no upstream resolver: nothing outside this machine is reachable" >"$STATE/resolv.conf"
  cat >"$STATE/cni/net.d/10-disney-train.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "disney-train", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$STATE/cni/ipam", "ranges": [[{"subnet": "$POD_CIDR"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
  node "$NODE" 0
  # the GPU pool: NVIDIA's device plugin's taint, and GPUs as an extended resource (Kubernetes' "Advertise
  # Extended Resources for a Node": the test's stand-in for the device plugin; nothing here runs CUDA)
  node "$GPU_NODE" 1 '{key: nvidia.com/gpu, value: present, effect: NoSchedule}'
  cat >"$STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$STATE/pki/kube-proxy.kubeconfig"}
hostnameOverride: $NODE
bindAddress: $NODE_IP
clusterCIDR: $POD_CIDR
mode: iptables
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  kc create clusterrolebinding kube-proxy-node-proxier --clusterrole=system:node-proxier --user=system:kube-proxy \
    --dry-run=client -o yaml | kc apply -f - >/dev/null
  # one kube-proxy serves both nodes: they share one network namespace
  start kube-proxy "$CLUSTER_BIN/kube-proxy" --config="$STATE/kube-proxy.yaml" --v=1
  wait_for "node $NODE Ready" 120 node_ready "$NODE"
  wait_for "node $GPU_NODE Ready" 120 node_ready "$GPU_NODE"
  kc patch node "$GPU_NODE" --subresource=status --type=json \
    -p "[{\"op\":\"add\",\"path\":\"/status/capacity/nvidia.com~1gpu\",\"value\":\"$FAKE_GPUS\"}]" >/dev/null
}

node_ready() { [ "$(kc get node "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]; }

s3() {
  s3_keys
  python3 - "$STATE/s3/s3.json" <<'EOF'
import json, os, sys
json.dump({"identities": [{"name": "admin", "credentials": [{"accessKey": os.environ["S3_ACCESS_KEY"],
          "secretKey": os.environ["S3_SECRET_KEY"]}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]},
          open(sys.argv[1], "w"))
EOF
  chmod 600 "$STATE/s3/s3.json"
  start seaweedfs "$WEED" mini -dir="$STATE/s3" -ip="$NODE_IP" -ip.bind="$NODE_IP" -admin.ui=false -webdav=false \
    -s3.port="$S3_PORT" -s3.port.iceberg=0 -s3.port.lance=0 -s3.config="$STATE/s3/s3.json" -master.telemetry=false
  wait_for "SeaweedFS S3" 60 curl -s -o /dev/null "http://$NODE_IP:$S3_PORT/"
}

addons() {
  kc apply -f "$HERE/manifests/coredns.yaml" >/dev/null
  # KubeRay as its own docs install it (config/default: CRDs, RBAC, the operator in `default`); server-side
  # because the CRDs are too large for kubectl's last-applied annotation
  kc apply --server-side --force-conflicts -k "$CLUSTER_BIN/kuberay-config/default" >/dev/null
  # the Prometheus Operator's CRDs: the chart's PodMonitor, ServiceMonitor and PrometheusRule are created
  KUBECONFIG=$ADMIN_KUBECONFIG bash "$HERE/monitoring-crds.sh"
  wait_for "CoreDNS" 120 kc -n kube-system rollout status deploy/coredns --timeout=5s
  wait_for "KubeRay's operator" 120 kc -n default rollout status deploy/kuberay-operator --timeout=5s
  kueue
}

# Kueue by its own Helm chart (tools/cluster/kueue-values.yaml), after KubeRay's CRDs (its RayJob integration
# starts only where they are). Its webhooks and its visibility API (an APIService: the API server's
# aggregation layer, certs() and the --requestheader/--proxy-client flags) are served by its pod.
kueue() {
  "$HELM" --kubeconfig "$ADMIN_KUBECONFIG" upgrade --install kueue "$KUEUE_DIR/chart" -n kueue-system \
    --create-namespace -f "$HERE/kueue-values.yaml" --set "controllerManager.manager.image.tag=$(kueue_version)" \
    --wait --timeout 4m >/dev/null || die "helm install of Kueue failed: $(kc -n kueue-system get pods -o wide 2>&1)"
  wait_for "Kueue's visibility API" 120 kc get --raw /apis/visibility.kueue.x-k8s.io/v1beta2
}

# the kubeconfig and S3 keys for this checkout, and where to start
finish() {
  mkdir -p "$(dirname "$KUBECONFIG_OUT")"
  kubeconfig admin "https://$NODE_IP:6443" >"$KUBECONFIG_OUT"
  # the cluster's S3, for `disney-train data pack` / `model push` from this host and for the jobs' Secret
  s3_keys
  (umask 077 && printf 'AWS_ENDPOINT_URL=http://%s:%s\nAWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n' \
    "$NODE_IP" "$S3_PORT" "$S3_ACCESS_KEY" "$S3_SECRET_KEY" >"$(dirname "$KUBECONFIG_OUT")/s3.env")
  log "up in $((SECONDS - t0)) s. Use it with:
    export KUBECONFIG=$KUBECONFIG_OUT            # kubectl, helm
    set -a; . $(dirname "$KUBECONFIG_OUT")/s3.env; set +a   # disney-train data pack / model push to its S3
  make cluster-down stops and removes it."
}

if healthy; then
  log "already up; the project's images imported again (what this checkout holds)"
  for i in 0 1; do
    CONTAINERD_SOCK=$RUN/containerd-$i.sock bash "$HERE/images.sh" base
    CONTAINERD_SOCK=$RUN/containerd-$i.sock bash "$HERE/images.sh" project
  done
  kueue  # a cluster from a checkout before Kueue gets it; else no change
  finish
  exit 0
fi
# what a cluster left when its processes were killed (a session's end, a reboot, an up.sh cut short):
# stale pid files, mounts, the namespace. None of it is trusted: down.sh removes it all, and the cluster
# comes up anew from the kept builds and image stores.
if leftovers; then
  log "a cluster that is not healthy was left here (its processes killed?): removing it first (down.sh)"
  bash "$HERE/down.sh"
fi
mkdir -p "$STATE"/{pki,log,etcd,cni/net.d,cni/ipam,s3} "$RUN"
network
certs
control_plane
nodes
s3
for i in 0 1; do CONTAINERD_SOCK=$RUN/containerd-$i.sock bash "$HERE/images.sh" project; done
addons
finish

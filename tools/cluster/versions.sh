# The test cluster's versions, in one place: build.sh builds them, up.sh and images.sh name them, and
# the cache folder is keyed by this file's content.
# Kubernetes 1.36: the last minor that supports containerd 1.x (Debian bookworm's is 1.6); its kubelet
# runs on this host's cgroup v1 only with failCgroupV1: false.
KUBE_VERSION=1.36.3
# KubeRay: the newest release the Go module proxy serves whole (v1.7.0's zip is refused: 403).
KUBERAY_VERSION=v1.6.2
COREDNS_VERSION=v1.14.2
PAUSE_VERSION=3.10.2

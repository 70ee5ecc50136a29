#!/usr/bin/env bash
# The test cluster's Debian packages: containerd (1.6, with its CRI) and runc, the CNI plugins, iptables
# and conntrack (kube-proxy), debootstrap (the images' Debian root), libc6-dev (a static pause). Installs
# what is missing as root; the cluster needs root anyway.
set -euo pipefail
need=()
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null || need+=(iptables)
command -v conntrack >/dev/null || need+=(conntrack)
command -v debootstrap >/dev/null || need+=(debootstrap)
[ -r /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
[ ${#need[@]} -eq 0 ] && exit 0
[ "$(id -u)" = 0 ] || { echo "cluster: missing ${need[*]}; install them as root (apt-get install ${need[*]})" >&2; exit 1; }
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null

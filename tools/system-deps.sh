#!/usr/bin/env bash
# Debian packages the tests need: iproute2 (`ip`, to bring up loopback in the test network
# namespace) and util-linux (`unshare`). Installs what is missing when root; otherwise says what.
set -euo pipefail
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
else
  echo "system-deps: missing ${need[*]}; install them (apt-get install ${need[*]})" >&2
  exit 1
fi

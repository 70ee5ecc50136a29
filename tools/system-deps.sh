#!/usr/bin/env bash
# Debian packages `make` needs: python3-venv (the venv), iproute2 (`ip`, to bring up loopback in
# the tests' network namespace) and util-linux (`unshare`). Installs what is missing when root;
# otherwise names it. Only the venv is required; without the other two the tests run without
# network isolation (tools/netns-run says so).
set -euo pipefail
need=()
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
elif [[ " ${need[*]} " == *" python3-venv "* ]]; then
  echo "system-deps: missing ${need[*]}; install them (apt-get install ${need[*]})" >&2
  exit 1
else
  echo "system-deps: missing ${need[*]} (apt-get install ${need[*]}); tests will run without network isolation" >&2
fi

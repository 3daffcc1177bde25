#!/usr/bin/env bash
# Sets everything up, then runs the lab demo: a node with pods, some in the mesh, traffic between
# them, and the kernel's and the proxy's own evidence of which connections went through the proxy.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/inmesh lab demo "$@"

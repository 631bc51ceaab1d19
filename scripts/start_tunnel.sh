#!/usr/bin/env bash
# Open the tunnel to the local receiver: scripts/start_tunnel.sh [ngrok|cloudflared]
# (default: tunnel.provider in the config). Runs `edgehook tunnel`; Ctrl-C stops it.
# Extra arguments go to `edgehook tunnel` (e.g. --allow-download for ngrok).
set -euo pipefail
cd "$(dirname "$0")/.."
EDGEHOOK=${EDGEHOOK:-$(command -v edgehook || echo "$PWD/.venv/bin/edgehook")}
provider=()
if [[ $# -gt 0 && ( $1 == ngrok || $1 == cloudflared ) ]]; then
  provider=(--provider "$1")
  shift
fi
exec "$EDGEHOOK" ${EDGEHOOK_CONFIG:+--config "$EDGEHOOK_CONFIG"} tunnel "${provider[@]}" "$@"

#!/usr/bin/env bash
# README's first command: edgehook end to end on its embedded defaults, offline, on loopback.
# Sets up the virtualenv, initialises a temporary edgehook directory, starts the receiver,
# sends a delivery signed exactly as W&B signs it, a repeat and a forgery, then verifies
# the audit log. Cleans up its processes and files (KEEP=1 keeps the directory).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
VENV=${EDGEHOOK_VENV:-.venv}
EDGEHOOK="$PWD/$VENV/bin/edgehook"
work=$(mktemp -d -t edgehook-demo.XXXXXX)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT INT TERM
port=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export EDGEHOOK_PORT=$port
step() { printf '\n== %s\n' "$*"; }

step "edgehook init (config and fresh secrets in $work)"
"$EDGEHOOK" init --dir "$work" | sed -n '1,8p'
cd "$work"

step "edgehook serve on 127.0.0.1:$port"
"$EDGEHOOK" serve >"$work/serve.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null || { cat "$work/serve.log"; exit 1; }
echo "receiver is up (loopback only; a tunnel is the way in)"

step "a delivery signed exactly as W&B signs it (edgehook send-test)"
"$EDGEHOOK" send-test
step "the same delivery again: a duplicate, nothing queued twice"
"$EDGEHOOK" send-test
step "a forged delivery (wrong signature)"
curl -sS -X POST "http://127.0.0.1:$port/webhook" -H 'Content-Type: application/json' \
  -H "Authorization: Bearer $(cat secrets/access_token)" -H 'X-Wandb-Signature: forged' -d '{}'
echo

step "the audit log (edgehook audit show)"
"$EDGEHOOK" audit show
step "the queued job, committed in the store"
"$OLDPWD/$VENV/bin/python" - <<'PY'
import sqlite3
for row in sqlite3.connect("data/edgehook.db").execute("SELECT id, action, state, args_json FROM jobs"):
    print("job %s: %s, %s, args %s" % row)
PY
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
step "edgehook audit verify"
"$EDGEHOOK" audit verify

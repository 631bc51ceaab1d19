#!/usr/bin/env bash
# README's first command: edgehook end to end on its embedded defaults, offline, on loopback.
# Sets up the virtualenv, initialises a temporary edgehook directory with a local dataset
# artifact, starts the receiver and the worker, sends a delivery signed exactly as W&B signs
# it, a repeat and a forgery, shows the job retrain a quantized model (QAT, int8 export,
# inference check in a fresh process, promotion), classifies an image with it (the CLI,
# then `edgehook predictor` over HTTP), then verifies the audit log.
# Cleans up its processes and files (KEEP=1 keeps the directory).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
VENV=${EDGEHOOK_VENV:-.venv}
EDGEHOOK="$PWD/$VENV/bin/edgehook"
VENV_PY="$PWD/$VENV/bin/python"
work=$(mktemp -d -t edgehook-demo.XXXXXX)
server_pid=""
worker_pid=""
predictor_pid=""
cleanup() {
  for pid in $predictor_pid $worker_pid $server_pid; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT INT TERM
port=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export EDGEHOOK_PORT=$port
step() { printf '\n== %s\n' "$*"; }

step "edgehook init (config and fresh secrets in $work)"
"$EDGEHOOK" init --dir "$work" | sed -n '1,8p'
cd "$work"

step "a local dataset artifact (no W&B account needed): my-team/edge-demo/cifar10-subset:v0"
"$OLDPWD/$VENV/bin/python" "$OLDPWD/scripts/demo_artifact.py" artifacts
printf '\n[artifacts]\nsource = "local"\nlocal_root = "artifacts"\n' >> edgehook.toml
# Log the run and the model to W&B too, offline (no account needed; `wandb sync` uploads later).
sed -i 's/^allow_unsigned = false$/allow_unsigned = false\npublish = "always"/' edgehook.toml
echo "60 images in 3 classes, with a manifest of SHA-256 digests; alias 'retrain' -> v0"

step "edgehook serve on 127.0.0.1:$port"
"$EDGEHOOK" serve >"$work/serve.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null || { cat "$work/serve.log"; exit 1; }
echo "receiver is up (loopback only; a tunnel is the way in)"

step "edgehook worker (a separate process; runs each job in an isolated child)"
WANDB_MODE=offline WANDB_SILENT=true "$EDGEHOOK" worker >"$work/worker.log" 2>&1 &
worker_pid=$!

step "a delivery signed exactly as W&B signs it (edgehook send-test)"
"$EDGEHOOK" send-test
step "the same delivery again: a duplicate, nothing queued twice"
"$EDGEHOOK" send-test
step "a forged delivery (wrong signature)"
curl -sS -X POST "http://127.0.0.1:$port/webhook" -H 'Content-Type: application/json' \
  -H "Authorization: Bearer $(cat secrets/access_token)" -H 'X-Wandb-Signature: forged' -d '{}'
echo

step "the worker claims the job and retrains (edgehook jobs logs 1, when it is done)"
for _ in $(seq 600); do
  "$EDGEHOOK" jobs list --json | grep -q '"state": "\(succeeded\|failed\)"' && break; sleep 0.2
done
"$EDGEHOOK" jobs logs 1
step "the job's record (edgehook jobs show 1)"
"$EDGEHOOK" jobs show 1
step "the device's models (edgehook model list)"
"$EDGEHOOK" model list
step "the run and the signed model, logged to W&B offline (edgehook jobs show 2)"
for _ in $(seq 300); do
  "$EDGEHOOK" jobs show 2 --json 2>/dev/null | grep -q '"state": "\(succeeded\|failed\)"' && break
  sleep 0.2
done
"$EDGEHOOK" jobs show 2 | grep -E '^(state|rule|summary)'
run_dir=$(find "$work/data/jobs/2" -maxdepth 4 -type d -name 'offline-run-*' | head -1)
echo "the offline W&B run lies in: ${run_dir:-<not found>}"
echo "(with a W&B account: wandb sync ${run_dir:-<run dir>}; KEEP=1 keeps the demo directory)"

step "the active int8 model classifies an image (edgehook infer)"
"$EDGEHOOK" infer artifacts/my-team/edge-demo/cifar10-subset/v0/vertical/000.pgm

predict_port=$("$VENV_PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
step "edgehook predictor on 127.0.0.1:$predict_port serves it to the device's applications"
"$EDGEHOOK" predictor --port "$predict_port" >"$work/predictor.log" 2>&1 &
predictor_pid=$!
for _ in $(seq 300); do curl -fsS "http://127.0.0.1:$predict_port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://127.0.0.1:$predict_port/healthz" || { cat "$work/predictor.log"; exit 1; }
echo
curl -fsS "http://127.0.0.1:$predict_port/predict?top_k=2" -H 'Content-Type: image/x-portable-graymap' \
  --data-binary @artifacts/my-team/edge-demo/cifar10-subset/v0/vertical/000.pgm
echo
kill "$predictor_pid"; wait "$predictor_pid" 2>/dev/null || true; predictor_pid=""
step "the audit log, receiver and worker (edgehook audit show)"
"$EDGEHOOK" audit show
kill "$worker_pid"; wait "$worker_pid" 2>/dev/null || true; worker_pid=""
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
step "edgehook audit verify"
"$EDGEHOOK" audit verify

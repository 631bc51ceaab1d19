#!/usr/bin/env bash
# Set up what edgehook needs on a fresh machine: system tools, a virtualenv, the package.
# Idempotent; used by scripts/test.sh and scripts/demo.sh.
#   EDGEHOOK_VENV   where the virtualenv lives (default: .venv in the repository)
#   EXTRAS          pip extras to install (default: dev,pipeline,tunnel)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${EDGEHOOK_VENV:-.venv}
EXTRAS=${EXTRAS:-dev,pipeline,tunnel}

# curl and openssl: end-to-end tests; wrk and webhook (adnanh/webhook): the benchmark smoke test;
# docker-compose (validates deploy/compose.yaml without an engine) and systemd-analyze (from
# the systemd package: verifies deploy/systemd): the packaging tests; unshare (util-linux):
# the disk-full fault test's user and mount namespace. chromium: the console's browser tests
# (Playwright drives Debian's build; it cannot download its own here).
missing=()
for tool in curl openssl wrk webhook docker-compose systemd-analyze unshare chromium; do
  package=$tool
  [ "$tool" = systemd-analyze ] && package=systemd
  [ "$tool" = unshare ] && package=util-linux
  command -v "$tool" >/dev/null || missing+=("$package")
done
# postgresql: the store and queue tests on PostgreSQL (tests/pg.py starts a throwaway cluster)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null \
  || missing+=(postgresql)
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${missing[*]}" >&2
    apt-get update -qq >/dev/null || true
    # one at a time: a package this machine cannot have must not keep the others out
    for package in "${missing[@]}"; do
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null 2>&1 \
        || echo "setup: could not install $package; the tests needing it will skip" >&2
    done
  else
    echo "setup: please install ${missing[*]} (the tests use them)" >&2
  fi
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || { echo "setup: edgehook needs Python 3.10 or newer" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
stamp="$VENV/.edgehook-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$(cat "$stamp")" != "$EXTRAS" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  if [[ ",$EXTRAS," == *",train,"* || ",$EXTRAS," == *",pipeline,"* ]]; then
    # torch and torchvision, pinned as a pair that imports together (torchvision's quantizable
    # families): PyPI's torchvision links the CUDA build of torch, so on x86_64 that pair
    # (it runs on the CPU); on aarch64 a CPU pair. On a Jetson, install NVIDIA's wheels for
    # JetPack first; the project accepts torch>=2.3, torchvision>=0.18.
    case "$(uname -m)" in
      aarch64|arm64) pair=(torch==2.9.1 torchvision==0.24.1) ;;
      *) pair=(torch==2.14.1 torchvision==0.29.1) ;;
    esac
    "$VENV/bin/python" -c 'import torch, torchvision' 2>/dev/null \
      || "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${pair[@]}"
  fi
  pins=()
  # The fake W&B server in tests/fakes is written against this SDK release.
  [[ ",$EXTRAS," == *",pipeline,"* ]] && pins+=("wandb==0.31.0")
  # onnx and onnxruntime, as the ONNX agreement tests were written against them.
  [[ ",$EXTRAS," == *",dev,"* ]] && pins+=("onnx==1.23.2" "onnxruntime==1.32.0")
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[$EXTRAS]" "${pins[@]}"
  echo "$EXTRAS" > "$stamp"
fi

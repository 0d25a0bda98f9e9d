#!/usr/bin/env bash
# Flower for comigs from the project folder, with the pinned flwr (flower/.venv, installed on
# first use by scripts/setup.sh --flower):
#   bash scripts/flower.sh superlink [flower-superlink flags]
#       a SuperLink (default 127.0.0.1:8000, plain HTTP; give --ssl-certfile, --ssl-keyfile and
#       --ssl-ca-certfile for TLS, --enable-supernode-auth to admit registered nodes only)
#   bash scripts/flower.sh run [flwr run flags, e.g. --run-config 'min-nodes=4 rounds=2']
#       the comigs ServerApp (flower/) on that SuperLink; its run folder is written under the
#       SuperLink's working folder (runs/flower-<method>-s<seed>-<run id>)
#   bash scripts/flower.sh flwr <flwr command> [args]    e.g. `ls comigs`, `log <run id> comigs`,
#       `supernode register runs/node0/node-key.pub comigs`
# `run` and `flwr` reach the SuperLink through the connection "comigs", written to
# flower/.flwr/config.toml (FLWR_HOME) from FLOWER_SUPERLINK (default 127.0.0.1:8000) and
# FLOWER_CA (the CA certificate for TLS; unset: plain HTTP).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --flower
venv="$PWD/flower/.venv/bin"

connection() {
  export FLWR_HOME="$PWD/flower/.flwr"
  mkdir -p "$FLWR_HOME"
  {
    echo '[superlink]'
    echo 'default = "comigs"'
    echo '[superlink.comigs]'
    echo "address = \"${FLOWER_SUPERLINK:-127.0.0.1:8000}\""
    if [ -n "${FLOWER_CA:-}" ]; then
      echo "root-certificates = \"$(realpath "$FLOWER_CA")\""
    else
      echo 'insecure = true'
    fi
  } >"$FLWR_HOME/config.toml"
}

command=${1:-}
shift || true
case "$command" in
superlink)
  tls=false
  for arg in "$@"; do [ "$arg" = --ssl-certfile ] && tls=true; done
  $tls || set -- --insecure "$@"
  # It starts flower-superexec by name (so the venv goes on PATH) and, unless told not to,
  # installs the app's dependencies with `uv sync` (the venv already has them).
  PATH="$venv:$PATH" exec flower-superlink --disable-runtime-dependency-installation "$@"
  ;;
run)
  connection
  exec "$venv/flwr" run flower comigs "$@"
  ;;
flwr)
  connection
  exec "$venv/flwr" "$@"
  ;;
*)
  echo "usage: bash scripts/flower.sh superlink [flags] | run [flags] | flwr <command> [args]" >&2
  exit 2
  ;;
esac

#!/usr/bin/env bash
# Sets up a fresh machine: npm packages (Deno itself comes from npm, pinned in package.json)
# and, on Linux without any Vulkan driver, Mesa's lavapipe so WebGPU has a (software) adapter.
# `--browser` also installs Chromium (Debian's; `deno task browser` and its test drive it);
# `--flower` also installs the pinned Flower into flower/.venv (scripts/setup_flower.sh: the
# SuperLink, the flwr CLI and the ServerApp's Python, for the Flower tests). `npm test` asks
# for both; `npm run train` for neither, so training needs no Python.
set -euo pipefail
browser=false
flower=false
for flag in "$@"; do
  case "$flag" in
  --browser) browser=true ;;
  --flower) flower=true ;;
  *)
    echo "setup: unknown flag $flag (use --browser, --flower)" >&2
    exit 2
    ;;
  esac
done
cd "$(dirname "$0")/.."

if ! command -v npm >/dev/null; then
  echo "setup: npm not found. Install Node.js 20+ with npm (e.g. apt-get install -y nodejs npm)." >&2
  exit 1
fi
if [ ! -x node_modules/deno/deno ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
# The deno package links its platform binary in a postinstall script; run it if npm skipped it.
[ -x node_modules/deno/deno ] || (cd node_modules/deno && node install.cjs)

if [ "$(uname -s)" = Linux ]; then
  if ! compgen -G "/usr/share/vulkan/icd.d/*.json" >/dev/null &&
    ! compgen -G "/etc/vulkan/icd.d/*.json" >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "setup: no Vulkan driver found; installing Mesa's lavapipe (mesa-vulkan-drivers)" >&2
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers >/dev/null
    else
      echo "setup: no Vulkan driver found, so WebGPU has no adapter. Install lavapipe with:" >&2
      echo "  sudo apt-get install -y mesa-vulkan-drivers" >&2
      exit 1
    fi
  fi
fi

if $browser && [ -z "${CHROMIUM:-}" ] && ! [ -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Chromium for the browser run and its test (apt chromium)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: no Chromium at /usr/bin/chromium. Install it (sudo apt-get install -y chromium)" >&2
    echo "  or set CHROMIUM to a Chromium or Chrome executable." >&2
    exit 1
  fi
fi

if $flower; then
  bash scripts/setup_flower.sh
fi

#!/usr/bin/env bash
# Installs the pinned Flower (flwr, flower/requirements.txt) into a project-local virtual
# environment, flower/.venv, made from pyenv's `python3` (CPython 3.11 on the project's
# machines; not Debian's /usr/bin/python3). It holds flower-superlink, the flwr CLI and what the
# shipped Flower App (flower/) imports. Idempotent: a venv whose stamp matches the requirements
# is left as it is, so a second run takes well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=flower/.venv
requirements=flower/requirements.txt
stamp=$venv/.requirements.sha256
want=$(sha256sum "$requirements" | cut -d' ' -f1)

if [ -x "$venv/bin/flower-superlink" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
if ! command -v python3 >/dev/null; then
  echo "setup_flower: python3 not found. Install CPython 3.10+ with pip and venv (pyenv's)." >&2
  exit 1
fi
echo "setup_flower: installing flwr into $venv (from $requirements)" >&2
rm -rf "$venv"
python3 -m venv "$venv"
# --no-deps: the file lists the whole tree; `pip check` then proves nothing is missing.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
  --requirement "$requirements"
"$venv/bin/python" -m pip check >/dev/null
echo "$want" >"$stamp"

#!/usr/bin/env bash
# Set up .venv (torch first, then this project with its test extra) and check a SUPIR model.
#
#   ./quickstart.sh                          check a tiny random demo model (no weights needed)
#   ./quickstart.sh SDXL_FILE [SUPIR_FILE]   check your own files
#   SUPIR_SDXL=... SUPIR_MODEL=... ./quickstart.sh
#
# Environment: PYTHON (default python3), TORCH (default torch==2.14.1, the version CI tests).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-torch==2.14.1}
SDXL=${1:-${SUPIR_SDXL:-}}
SUPIR=${2:-${SUPIR_MODEL:-}}

if [ ! -x .venv/bin/python ]; then
    echo "Creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "Installing $TORCH (a no-op when it is already there)"
.venv/bin/python -m pip install -q "$TORCH"
# The constraints file holds torch at the version just installed, so no dependency can replace it.
TORCH_VERSION=$(.venv/bin/python -m pip list --format=freeze | sed -n 's/^torch==//p')
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" >"$CONSTRAINTS"
echo "Installing sd-webui-supir with its test extra"
.venv/bin/python -m pip install -q -e ".[test]" -c "$CONSTRAINTS"

if [ -n "$SDXL" ] || [ -n "$SUPIR" ]; then
    args=()
    [ -n "$SDXL" ] && args+=(--sdxl "$SDXL")
    [ -n "$SUPIR" ] && args+=(--supir "$SUPIR")
    echo "Checking ${args[*]}"
    exec .venv/bin/python -m supir_engine check "${args[@]}"
fi
echo "No model files given (arguments or SUPIR_SDXL / SUPIR_MODEL): running the demo check on a tiny random"
echo "model with the real layout. It has no real weights; give your SDXL and SUPIR files to check them."
exec .venv/bin/python -m supir_engine check --demo

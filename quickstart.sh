#!/usr/bin/env bash
# Set up .venv (torch first, then this project with its test extra), then run the main job.
#
#   ./quickstart.sh                  no models: a demo on a tiny model with random weights (check + upscale)
#   ./quickstart.sh IMAGE...         upscale images x2 with the models in models/SUPIR (or SUPIR_MODELS_DIR),
#                                    or with SUPIR_SDXL=... SUPIR_MODEL=... naming the files; results go to
#                                    supir_outputs/
#
# Environment: PYTHON (default python3), TORCH (default torch==2.14.1, the version CI tests).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-torch==2.14.1}
SDXL=${SUPIR_SDXL:-}
SUPIR=${SUPIR_MODEL:-}

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

model_args=()
[ -n "$SDXL" ] && model_args+=(--sdxl "$SDXL")
[ -n "$SUPIR" ] && model_args+=(--supir "$SUPIR")
if [ "$#" -gt 0 ]; then
    echo "Upscaling $* (models: ${model_args[*]:-looked up in ${SUPIR_MODELS_DIR:-models/SUPIR}})"
    exec .venv/bin/python -m supir_engine upscale "$@" "${model_args[@]}"
fi
if [ "${#model_args[@]}" -gt 0 ]; then
    exec .venv/bin/python -m supir_engine check "${model_args[@]}"
fi
echo "No images given: running the demo on a tiny model with RANDOM weights (it proves the installation"
echo "works end to end; its output is noise). Give images to upscale them with the real models."
.venv/bin/python -m supir_engine check --demo
exec .venv/bin/python -m supir_engine upscale --demo --steps 4

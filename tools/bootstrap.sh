#!/usr/bin/env bash
# Creates .venv and installs what `make test` and `make demo` need, on a fresh machine or a GPU box.
#  - A python that already imports torch (e.g. the GPU machine's image) is reused through
#    --system-site-packages; otherwise torch is installed pinned (==2.13.0, the CPU build): an
#    unpinned torch pulls a multi-GB CUDA build.
#  - Wheels in .whl/ (carried to an offline GPU box) are used as a local package source.
#  - csrc/ is built into gmm_triton._C against that torch (no build isolation).
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
PIP_EXTRA=()
[ -d .whl ] && PIP_EXTRA+=(--find-links .whl)

if [ ! -x "$VENV/bin/python" ]; then
  if "$PYTHON" -c 'import torch' 2>/dev/null; then
    echo "bootstrap: reusing the torch of $PYTHON ($("$PYTHON" -c 'import torch; print(torch.__version__)'))"
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
if ! "$PY" -c 'import torch' 2>/dev/null; then
  "$PY" -m pip install -q torch==2.13.0
fi
# Install only what is missing or at another version: on an offline machine that already has
# everything, pip then needs no index.
missing=$("$PY" tools/missing_requirements.py requirements-dev.txt)
if [ -n "$missing" ]; then
  # shellcheck disable=SC2086
  "$PY" -m pip install -q "${PIP_EXTRA[@]}" $missing
fi
# these go in without their dependencies (see the file), so they can never move the pinned torch
missing=$("$PY" tools/missing_requirements.py requirements-nodeps.txt)
if [ -n "$missing" ]; then
  # shellcheck disable=SC2086
  "$PY" -m pip install -q --no-deps "${PIP_EXTRA[@]}" $missing
fi
"$PY" -m pip install -q --no-build-isolation --no-deps -e .
"$PY" -c 'import gmm_triton, gmm_triton.ops as o; print("bootstrap: gmm_triton", gmm_triton.__version__, "| CPU backend:", o.cpu_backend())'

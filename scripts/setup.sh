#!/usr/bin/env bash
# Create .venv and install mmcore into it. Usage: scripts/setup.sh [EXTRAS]  (e.g. "test,bench")
# torch: a machine with an NVIDIA GPU gets the newest torch from PyPI (a CUDA build); a machine
# without one gets torch==2.13.0, the CPU build where a local wheel provides it.
# Set TORCH_SPEC to choose yourself, e.g. TORCH_SPEC="torch==2.5.1".
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [ -n "${TORCH_SPEC:-}" ]; then
    torch_spec="$TORCH_SPEC"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    torch_spec="torch>=2.4"
  else
    torch_spec="torch==2.13.0"
  fi
  echo "setup: installing $torch_spec" >&2
  "${pip[@]}" "$torch_spec"
fi
target="."
[ -n "$extras" ] && target=".[$extras]"
"${pip[@]}" -e "$target"
if [[ ",$extras," == *",test,"* ]]; then
  "${pip[@]}" ./examples/mmcore-example-plugin
fi

#!/usr/bin/env bash
# Set up, train the clip-tiny preset on the built-in shapes data, evaluate zero-shot on
# colour-shape combinations never seen in training. Usage: scripts/demo.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out="${1:-runs/clip-tiny}"
.venv/bin/mmcore train clip-tiny --out "$out" --resume
.venv/bin/mmcore eval "$out" --task zero-shot
.venv/bin/mmcore eval "$out" --task retrieval

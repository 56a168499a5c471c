#!/usr/bin/env bash
# Set up with test extras, then lint, type-check and run the test suite (which also runs
# every README/docs code block and `mkdocs build --strict`: tests/test_docs.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export TRITON_INTERPRET=1
.venv/bin/ruff check mmcore plugins tests bench examples scripts/gen_docs.py
.venv/bin/mypy
# per-test limit: pytest-timeout, set in pyproject.toml ([tool.pytest.ini_options] timeout)
.venv/bin/python -m pytest -q "$@"

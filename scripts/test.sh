#!/usr/bin/env bash
# Runs the whole suite: lint, types, then every test tier (unit, Ray integration, end to end).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"

#!/usr/bin/env bash
# Runs the whole suite: lint, types, then every test tier (unit, Ray integration, end to end, faults)
# spread over pytest-xdist workers, then the browser tier in a run of its own (Playwright's sync API
# keeps an event loop in the main thread that asyncio tests after it cannot share).
# With arguments, runs exactly that pytest selection in one process instead.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/mypy
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest -q "$@"
fi
# Three workers on two cores: the cluster tiers (one worker, see tests/conftest.py) spend much of
# their time waiting on processes, so the in-process tests fill the idle core.
workers="${FOUNDRY_TEST_WORKERS:-3}"
status=0
# The first tier's outcome is repeated at the very end: a CI log is often read from its tail, and the
# browser tier's output would otherwise bury which non-browser test failed.
first_tier="$(mktemp)"
trap 'rm -f "$first_tier"' EXIT
.venv/bin/python -m pytest -q -n "$workers" --dist loadgroup -m "not browser" --durations=25 \
  | tee "$first_tier" || status=$?
.venv/bin/python -m pytest -q -m browser --durations=10 || status=$?
echo "== non-browser tiers:"
grep -E '^(FAILED|ERROR) | in [0-9.]+s( \(.*\))?( =+)?$' "$first_tier" || echo "(no summary line)"
exit "$status"

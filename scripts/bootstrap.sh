#!/usr/bin/env bash
# Installs everything Foundry and its tests need on a fresh machine, idempotently:
#   .venv/   the Python virtualenv with Foundry and its dev tools
#   .tools/  pinned npm packages: the sandbox-agent server binary and GitHub's real webhook examples
# Re-running is cheap: each step is skipped when its stamp matches its inputs.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
NPM_PACKAGES=(
  "@sandbox-agent/cli@0.4.2"            # the sandbox-agent server every sandbox runs
  "@octokit/webhooks-examples@7.6.1"    # real GitHub webhook payloads the tests replay
)

if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.foundry-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing Python packages" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  # constraints.txt pins every transitive package to the versions the test suite passed with;
  # regenerate it with `.venv/bin/pip freeze --exclude-editable > constraints.txt` after an upgrade.
  .venv/bin/python -m pip install --progress-bar on -c constraints.txt -e ".[dev]" \
    | sed -E '/^(Requirement already satisfied|  Using cached)/d'
  echo "$want" > "$stamp"
fi

npm_stamp=.tools/.installed
npm_want=$(printf '%s\n' "${NPM_PACKAGES[@]}" | sha256sum | cut -d' ' -f1)
if [ ! -f "$npm_stamp" ] || [ "$(cat "$npm_stamp")" != "$npm_want" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "bootstrap: npm is required to install the sandbox-agent binary (install Node.js 20+)" >&2
    exit 1
  fi
  echo "bootstrap: installing npm packages into .tools" >&2
  mkdir -p .tools
  [ -f .tools/package.json ] || echo '{"name":"foundry-tools","private":true}' > .tools/package.json
  npm install --silent --no-audit --no-fund --prefix .tools "${NPM_PACKAGES[@]}"
  chmod +x .tools/node_modules/@sandbox-agent/cli-linux-*/bin/sandbox-agent 2>/dev/null || true
  echo "$npm_want" > "$npm_stamp"
fi

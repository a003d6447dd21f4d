#!/usr/bin/env bash
# Installs everything Foundry and its tests need on a fresh machine, idempotently:
#   .venv/   the Python virtualenv with Foundry and its dev tools
#   .tools/  pinned npm packages: the sandbox-agent server binary and GitHub's real webhook examples,
#            and in .tools/agents the real Claude Code that sandboxes run
# Re-running is cheap: each step is skipped when its stamp matches its inputs.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
NPM_PACKAGES=(
  "@sandbox-agent/cli@0.4.2"            # the sandbox-agent server every sandbox runs
  "@octokit/webhooks-examples@7.6.1"    # real GitHub webhook payloads the tests replay
)

# One line per step, so a first run (a few minutes) shows where it is and a repeat run says why it
# did nothing. Details go to the terminal only when a step fails.
step() { echo "bootstrap: $*" >&2; }

if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.foundry-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  step "installing Python packages into .venv (pinned by constraints.txt; a first install takes a minute or two)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  # constraints.txt pins every transitive package to the versions the test suite passed with;
  # regenerate it with `.venv/bin/pip freeze --exclude-editable > constraints.txt` after an upgrade.
  .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
  echo "$want" > "$stamp"
else
  step "Python packages: up to date"
fi

# Foundry's own bytecode, written ahead: environments that set PYTHONDONTWRITEBYTECODE (CI images
# often do) otherwise compile every module from source in every process start, which costs each
# restarted host process and each worker a few hundred milliseconds. Python still reads .pyc files
# under that setting, and ignores one whose source changed since, so this is always safe to rerun
# (it recompiles only what changed).
.venv/bin/python -m compileall -q -j 0 foundry actors migrations bench >/dev/null

npm_stamp=.tools/.installed
npm_want=$(printf '%s\n' "${NPM_PACKAGES[@]}" | sha256sum | cut -d' ' -f1)
if [ ! -f "$npm_stamp" ] || [ "$(cat "$npm_stamp")" != "$npm_want" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "bootstrap: npm is required to install the sandbox-agent binary (install Node.js 20+)" >&2
    exit 1
  fi
  step "installing npm packages into .tools (${NPM_PACKAGES[*]})"
  mkdir -p .tools
  [ -f .tools/package.json ] || echo '{"name":"foundry-tools","private":true}' > .tools/package.json
  npm install --silent --no-audit --no-fund --prefix .tools "${NPM_PACKAGES[@]}"
  chmod +x .tools/node_modules/@sandbox-agent/cli-linux-*/bin/sandbox-agent 2>/dev/null || true
  echo "$npm_want" > "$npm_stamp"
else
  step "npm packages in .tools: up to date"
fi

# Claude Code and its ACP adapter (pinned in foundry/drivers/sandbox/agents.py) into .tools/agents,
# so that sandboxes can run the `claude` agent and tests/agents runs the real one (against a fake
# model API). About 70 MB and 10-30 s the first time; a repeat run only checks the stamp (~1 s).
# Codex and OpenCode are larger (650 and 350 MB): `.venv/bin/foundry agents install codex opencode`.
if agents_out=$(.venv/bin/foundry agents install claude 2>&1); then
  step "agents: $agents_out"
else
  echo "bootstrap: could not install Claude Code for sandboxes; tests/agents will skip: $agents_out" >&2
fi

# The browser dashboard (foundry/dashboard): pinned npm packages (npm ci, from the lockfile), then a
# type-check and an esbuild bundle into foundry/dashboard/dist, which `foundry serve` serves at /.
dash=foundry/dashboard
if ! command -v npm >/dev/null 2>&1; then
  echo "bootstrap: npm is required to build the dashboard (install Node.js 20+)" >&2
  exit 1
fi
deps_stamp=$dash/node_modules/.foundry-installed
deps_want=$(cat $dash/package.json $dash/package-lock.json | sha256sum | cut -d' ' -f1)
if [ ! -f "$deps_stamp" ] || [ "$(cat "$deps_stamp")" != "$deps_want" ]; then
  step "installing the dashboard's npm packages (npm ci)"
  npm ci --silent --no-audit --no-fund --prefix $dash
  echo "$deps_want" > "$deps_stamp"
else
  step "dashboard npm packages: up to date"
fi
build_stamp=$dash/dist/.foundry-built
build_want=$( (echo "$deps_want"; find $dash/src $dash/build.mjs $dash/tsconfig.json -type f | sort | xargs cat) \
  | sha256sum | cut -d' ' -f1)
if [ ! -f "$build_stamp" ] || [ "$(cat "$build_stamp")" != "$build_want" ]; then
  step "building the dashboard"
  npm run --silent --prefix $dash build
  echo "$build_want" > "$build_stamp"
else
  step "dashboard build: up to date"
fi

# Debian packages, installed with apt-get when missing (as root, or with passwordless sudo):
#   apt_install <package> <file it provides> <what needs it>
apt_install() {
  local package=$1 provides=$2 why=$3 can=1
  local as_root=()
  [ -x "$provides" ] && return 0
  # (an empty array counts as unset for ${x+set}, hence the separate flag)
  if [ "$(id -u)" = 0 ]; then
    :
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  else
    can=0
  fi
  if [ "$can" = 1 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing $package ($why)" >&2
    "${as_root[@]}" apt-get install -y -q "$package" >/dev/null \
      || { "${as_root[@]}" apt-get update -q >/dev/null && "${as_root[@]}" apt-get install -y -q "$package" >/dev/null; } \
      || echo "bootstrap: could not install $package; $why will not work" >&2
  else
    echo "bootstrap: $provides is missing and cannot be installed here (needs root or" \
      "passwordless sudo, and apt-get); install Debian's $package package ($why)" >&2
  fi
}

# bubblewrap jails every local sandbox (sandbox.isolation = bwrap, the default); without it sandbox
# creation fails and /readyz says what is missing.
apt_install bubblewrap /usr/bin/bwrap "the sandbox jail"
apt_install passt /usr/bin/pasta "sandbox network egress"
# The test suite delays bubblewrap's start on purpose with strace (a jail set up late must still start).
apt_install strace /usr/bin/strace "a sandbox test"
# Debian's Chromium for the browser tests (Playwright drives it; no browser download).
apt_install chromium /usr/bin/chromium "the browser tests (tests/browser)"

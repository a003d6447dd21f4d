# Foundry: one image that runs `foundry serve` (HTTP, the actor runtime and a local Ray).
# Not built on the development machines (no Docker engine there); see README "Deployment files".
#
#   docker build -t foundry .
#   docker run --shm-size=1g -p 7741:7741 -v foundry-data:/data --env-file foundry.env foundry
#
# The image runs production mode: foundry.env must give the production settings (FOUNDRY_SECRET_KEY,
# FOUNDRY_APP_URL and the GitHub App's FOUNDRY_GITHUB__*; `foundry serve` names any that is missing).
# Mock mode signs anyone in as a seeded admin, so it refuses 0.0.0.0 unless told otherwise: to try
# it in a container, use compose.dev.yaml (loopback-only port, explicit FOUNDRY_ALLOW_PUBLIC_MOCK).
#
# Ray keeps its object store in /dev/shm. Docker's default 64 MB is below Foundry's 256 MiB store,
# so give the container --shm-size (compose: shm_size); otherwise Ray falls back to slower /tmp.

# trixie (Debian 13) ships Node.js 20, the version Foundry's tooling expects.
FROM python:3.11-slim-trixie

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# git: sandboxes clone and push task branches. nodejs/npm: sandbox-agent and the agents ship through
# npm, and Claude Code and Codex's CLI run on Node. tini: PID 1 that reaps the orphans of Ray workers, sandbox-agent
# servers and agent processes.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git nodejs npm tini \
 && rm -rf /var/lib/apt/lists/*

# The sandbox-agent server, pinned like scripts/bootstrap.sh. The native binary goes on PATH directly:
# npm's Node.js wrapper would not forward signals to the server (foundry/drivers/sandbox/binary.py).
RUN npm install --prefix /opt/sandbox-agent --omit=dev --no-audit --no-fund --cache /tmp/npm-cache \
        @sandbox-agent/cli@0.4.2 \
 && rm -rf /tmp/npm-cache \
 && native="$(echo /opt/sandbox-agent/node_modules/@sandbox-agent/cli-linux-*/bin/sandbox-agent)" \
 && chmod 0755 "$native" \
 && ln -s "$native" /usr/local/bin/sandbox-agent \
 && sandbox-agent --version

# Dependencies first, each in a layer of its own that stays cached until its manifest changes: a
# change to Foundry's sources rebuilds only the two short steps after `COPY . /src`.
COPY pyproject.toml constraints.txt /src/
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip install -c /src/constraints.txt -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
COPY foundry/dashboard/package.json foundry/dashboard/package-lock.json /src/foundry/dashboard/
RUN cd /src/foundry/dashboard && npm ci --no-audit --no-fund --cache /tmp/npm-cache && rm -rf /tmp/npm-cache

COPY . /src
# The browser dashboard: the bundle into foundry/dashboard/dist, which the wheel ships as package
# data (the build tools are not kept). Then Foundry itself, at the versions the test suite passed
# with (constraints.txt): its dependencies are installed already. The wheel ships the role
# migrations (the top-level `migrations` package) and the dashboard's dist/.
RUN cd /src/foundry/dashboard && npm run build && rm -rf node_modules
RUN pip install -c /src/constraints.txt /src \
 && rm -rf /src \
 && foundry --version

# The real agents sandboxes run (`foundry agents install`, versions pinned in
# foundry/drivers/sandbox/agents.py), owned by root and read-only for the foundry user: Claude Code,
# Codex and OpenCode with `all` (about 1.1 GB); pick fewer with e.g. --build-arg FOUNDRY_AGENTS=claude,
# or none with FOUNDRY_AGENTS=none. Provider keys are not part of the image: each organization's
# admins set theirs in the dashboard.
ARG FOUNDRY_AGENTS=all
ENV FOUNDRY_SANDBOX__AGENTS_DIR=/opt/foundry-agents
RUN if [ "$FOUNDRY_AGENTS" != none ]; then \
      npm_config_cache=/tmp/npm-cache foundry agents install $FOUNDRY_AGENTS && rm -rf /tmp/npm-cache; \
    fi \
 && foundry agents ls

RUN groupadd --gid 10001 foundry \
 && useradd --uid 10001 --gid foundry --create-home --shell /usr/sbin/nologin foundry \
 && mkdir /data \
 && chown foundry:foundry /data

# FOUNDRY_HOST=0.0.0.0: the container's port is published by Docker; production mode, because mock
# mode on a public interface would let anyone in as an admin (foundry serve refuses it).
# RAY_USAGE_STATS_ENABLED=0: a self-hosted backend does not report usage to Ray's servers.
ENV FOUNDRY_MODE=production \
    FOUNDRY_HOST=0.0.0.0 \
    FOUNDRY_DATA_DIR=/data \
    RAY_USAGE_STATS_ENABLED=0

USER foundry
WORKDIR /home/foundry
VOLUME ["/data"]
EXPOSE 7741

# Liveness only (/readyz also checks the actor runtime). Python's urllib, so no curl in the image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FOUNDRY_PORT', '7741'), timeout=4)"

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["foundry", "serve"]

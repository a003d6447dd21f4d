# Foundry: one image that runs `foundry serve` (HTTP, the actor runtime and a local Ray).
# Not built on the development machines (no Docker engine there); see README "Deployment files".
#
#   docker build -t foundry .
#   docker run --shm-size=1g -p 127.0.0.1:7741:7741 -v foundry-data:/data foundry
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

# git: sandboxes clone and push task branches. nodejs/npm: sandbox-agent ships through npm, and
# agents it installs may need Node. tini: PID 1 that reaps the orphans of Ray workers, sandbox-agent
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

COPY . /src
# The browser dashboard: pinned npm packages from the lockfile, then the bundle into
# foundry/dashboard/dist, which the wheel ships as package data (build tools are not kept).
RUN cd /src/foundry/dashboard \
 && npm ci --no-audit --no-fund --cache /tmp/npm-cache \
 && npm run build \
 && rm -rf node_modules /tmp/npm-cache
# Non-editable install. The role migrations (migrations/<role>/) are not part of the wheel, and
# foundry.db.migrate looks for them beside the installed packages (<site-packages>/migrations),
# so they are copied there.
RUN pip install /src \
 && cp -r /src/migrations "$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/migrations" \
 && rm -rf /src \
 && foundry --help >/dev/null

RUN groupadd --gid 10001 foundry \
 && useradd --uid 10001 --gid foundry --create-home --shell /usr/sbin/nologin foundry \
 && mkdir /data \
 && chown foundry:foundry /data

# RAY_USAGE_STATS_ENABLED=0: a self-hosted backend does not report usage to Ray's servers.
ENV FOUNDRY_HOST=0.0.0.0 \
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

"""Installing the real agents (`foundry.drivers.sandbox.agents.AGENTS`) from npm.

Each agent gets a directory of its own, ``<agents_dir>/<id>``, holding exactly its pinned packages.
An install is built beside it (``.<id>.partial``) and swapped in only once npm succeeded and the
programs sandbox-agent runs are there, so a failed or interrupted install never leaves a half
agent that sandboxes would try to run. Installing what is already installed at the pinned versions
does nothing (and needs neither npm nor the network).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from foundry.drivers.sandbox.agents import (
    AGENTS,
    STAMP,
    AgentSpec,
    find_node,
    installed_agents,
    installed_at,
)

__all__ = ["AgentInstallError", "InstallResult", "agent_status", "install_agent"]

log = logging.getLogger(__name__)

#: npm's error codes that mean the registry could not be reached.
_OFFLINE = re.compile(
    r"ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH|"
    r"network request|request to \S+ failed|socket hang up"
)
_NPM_TIMEOUT_S = 15 * 60


class AgentInstallError(Exception):
    """An install failed; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class InstallResult:
    agent: str
    #: False when the pinned packages were installed already (nothing was done).
    changed: bool
    directory: Path


def _registry() -> str:
    # npm reads its settings from the environment in either case.
    names = ("npm_config_registry", "NPM_CONFIG_REGISTRY")
    return next((os.environ[name] for name in names if os.environ.get(name)), "npm's registry")


#: npm error lines that say nothing on their own (error fields, stack frames, boilerplate).
_NPM_NOISE = re.compile(
    r"^(code|errno|syscall|type|address|port|requiredBy)\b|^at |^[{}]|^A complete log|^If you"
)


def _npm_reason(output: str) -> str:
    """The line of npm's error output that says what went wrong."""
    errors = []
    for line in output.splitlines():
        for prefix in ("npm error", "npm ERR!"):
            if line.startswith(prefix):
                text = line.removeprefix(prefix).strip()
                if text and not _NPM_NOISE.search(text):
                    errors.append(text)
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return errors[0] if errors else (lines[-1] if lines else "no output")


def _npm_failure(spec: AgentSpec, output: str) -> AgentInstallError:
    why = _npm_reason(output)
    packages = " ".join(spec.packages)
    if _OFFLINE.search(output):
        return AgentInstallError(
            f"could not reach {_registry()} to download {packages} (is this machine offline, or does "
            f"it need an npm proxy or registry setting?): {why}"
        )
    return AgentInstallError(f"npm could not install {packages}: {why}")


def install_agent(agent_id: str, agents_dir: Path, *, npm: str | None = None) -> InstallResult:
    """Install ``agent_id`` at its pinned versions into ``agents_dir/<agent_id>``; idempotent.

    Concurrent installs into one directory wait for each other (a lock file), and the second then
    finds the agent installed.

    Raises:
        AgentInstallError: unknown agent, npm or Node.js missing, the registry unreachable, or npm
            failing; the message says which, in one line.
    """
    spec = AGENTS.get(agent_id)
    if spec is None:
        raise AgentInstallError(f"unknown agent {agent_id!r}; choose from {', '.join(AGENTS)} or all")
    directory = agents_dir / agent_id
    if agent_id in installed_agents(agents_dir):
        return InstallResult(agent_id, False, directory)
    npm_path = npm or shutil.which("npm")
    if npm_path is None:
        raise AgentInstallError(
            f"npm is not installed (not found on PATH); install Node.js 20+ with npm to install {spec.title}"
        )
    if find_node() is None:
        raise AgentInstallError(f"node is not installed (not found on PATH); {spec.title} needs Node.js 20+")
    try:
        agents_dir.mkdir(parents=True, exist_ok=True)
        lock = (agents_dir / ".install.lock").open("w")
    except OSError as exc:
        raise AgentInstallError(f"cannot write to {agents_dir}: {exc.strerror or exc}") from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if agent_id in installed_agents(agents_dir):
            return InstallResult(agent_id, False, directory)
        partial = agents_dir / f".{agent_id}.partial"
        try:
            _build(spec, partial, npm_path)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        _swap_in(partial, directory, spec)
    return InstallResult(agent_id, True, directory)


def _build(spec: AgentSpec, partial: Path, npm_path: str) -> None:
    """npm-install ``spec``'s packages into ``partial`` and check its programs are there."""
    try:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        manifest = {
            "name": f"foundry-agent-{spec.id}",
            "private": True,
            "dependencies": dict(_split(package) for package in spec.packages),
        }
        (partial / "package.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise AgentInstallError(f"cannot write to {partial.parent}: {exc.strerror or exc}") from exc
    log.info("installing agent %s (%s) into %s", spec.id, " ".join(spec.packages), partial.parent)
    try:
        done = subprocess.run(
            [npm_path, "install", "--omit=dev", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=partial,
            capture_output=True,
            text=True,
            timeout=_NPM_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise AgentInstallError(f"npm ({npm_path}) could not be run: {exc}") from exc
    if done.returncode != 0:
        # The raised error carries npm's reason in one line; the whole output is for debugging.
        log.debug("npm install of %s failed: %s", spec.id, done.stderr[-4000:])
        raise _npm_failure(spec, done.stderr + "\n" + done.stdout)
    (partial / STAMP).write_text(spec.stamp(), encoding="utf-8")
    if installed_at(spec, partial, find_node()) is None:
        raise AgentInstallError(
            f"npm installed {' '.join(spec.packages)} but {spec.title}'s programs are missing "
            f"({spec.adapter.path}, {spec.native.path}); is this platform supported?"
        )


def _split(package: str) -> tuple[str, str]:
    name, _, version = package.rpartition("@")
    return name, version


def _swap_in(partial: Path, directory: Path, spec: AgentSpec) -> None:
    # The version it replaces is kept as `.<id>.previous` until the next install: sandboxes that
    # are running have its directory mounted and may still load files from it.
    previous = directory.with_name(f".{spec.id}.previous")
    try:
        if directory.exists():
            shutil.rmtree(previous, ignore_errors=True)
            directory.rename(previous)
        partial.rename(directory)
    except OSError as exc:
        why = exc.strerror or exc
        raise AgentInstallError(f"cannot move the new install into {directory}: {why}") from exc


def agent_status(agents_dir: Path) -> list[dict[str, object]]:
    """Each known agent: installed or not, its pinned packages, and the keys it reads."""
    installed = installed_agents(agents_dir)
    return [
        {
            "id": spec.id,
            "title": spec.title,
            "installed": spec.id in installed,
            "packages": list(spec.packages),
            "directory": str(agents_dir / spec.id),
            "keys": list(spec.keys),
        }
        for spec in AGENTS.values()
    ]

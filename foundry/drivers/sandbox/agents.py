"""The real coding agents Foundry can run in its sandboxes: Claude Code, Codex and OpenCode.

Each is installed from npm, at the versions pinned here (the one place they are pinned), into a
directory of its own under the agents directory (``foundry agents install``,
`foundry.agents_install`). sandbox-agent 0.4.2 runs an agent id ``X`` only when its install
directory holds both a launcher ``agent_processes/X-acp`` (the ACP adapter, started with no
arguments) and the agent's own program ``X`` (it refuses to run the adapter otherwise, and with
``SANDBOX_AGENT_REQUIRE_PREINSTALL=1`` it never downloads one). `registrations` gives both, as
small shell scripts that ``exec`` the installed files by absolute path; the sandbox provider writes
them into every sandbox and mounts the agents directory read-only inside the jail.

Nothing here is secret: provider keys reach the agent through the sandbox's environment, never
through these scripts or a command line.
"""

from __future__ import annotations

import json
import platform
import shlex
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "AGENTS",
    "STAMP",
    "AgentSpec",
    "Entry",
    "InstalledAgent",
    "Registrations",
    "default_agents_dir",
    "find_node",
    "install_hint",
    "installed_agents",
    "installed_at",
    "registrations",
]

#: Written into an agent's directory once its npm install succeeded: the packages it holds.
STAMP = ".foundry-agent.json"

_NPM_ARCH = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}


@dataclass(frozen=True)
class Entry:
    """A program inside an agent's ``node_modules``.

    ``path`` is relative to ``node_modules``; ``{platform}`` in it becomes npm's platform suffix
    (``linux-x64``), for programs that npm installs from a per-platform package. ``node`` runs a
    JavaScript file with Node.js; otherwise the file is executed itself.
    """

    path: str
    node: bool = False
    args: tuple[str, ...] = ()

    def resolve(self, modules: Path) -> Path:
        return modules / self.path.format(platform=npm_platform())


@dataclass(frozen=True)
class AgentSpec:
    """One agent: what to install and what sandbox-agent runs.

    Attributes:
        id: sandbox-agent's agent id (also the name of its native program).
        title: the product's name, for people.
        packages: the npm packages to install, each pinned to an exact version.
        adapter: the ACP adapter (sandbox-agent's ``<id>-acp`` launcher runs it).
        native: the agent's own program (``<id>`` in the install directory).
        keys: the environment variables that carry its provider credentials (set per organization
            in the dashboard's agent credentials).
        defaults: environment defaults for the adapter, applied only when the sandbox's environment
            does not set the variable already.
    """

    id: str
    title: str
    packages: tuple[str, ...]
    adapter: Entry
    native: Entry
    keys: tuple[str, ...]
    defaults: Mapping[str, str] = field(default_factory=dict)

    def stamp(self) -> str:
        """What `STAMP` holds once exactly these packages are installed."""
        return json.dumps({"agent": self.id, "packages": list(self.packages)}, sort_keys=True)


AGENTS: dict[str, AgentSpec] = {
    spec.id: spec
    for spec in (
        AgentSpec(
            id="claude",
            title="Claude Code",
            # The adapter pins @anthropic-ai/claude-agent-sdk exactly (0.2.83), which ships Claude
            # Code itself (cli.js, 2.1.83): the adapter runs it, and it is the `claude` program too.
            packages=("@zed-industries/claude-agent-acp@0.23.1",),
            adapter=Entry("@zed-industries/claude-agent-acp/dist/index.js", node=True),
            native=Entry("@anthropic-ai/claude-agent-sdk/cli.js", node=True),
            keys=("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"),
            defaults={
                # A self-hosted sandbox neither updates the agent behind Foundry's back nor sends
                # telemetry or error reports; only the model API is called.
                "DISABLE_AUTOUPDATER": "1",
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                # Claude Code refuses to start its sessions as root unless told it is sandboxed;
                # it is (an unjailed sandbox of a Foundry running as root would fail otherwise).
                "IS_SANDBOX": "1",
            },
        ),
        AgentSpec(
            id="codex",
            title="Codex",
            # codex-acp embeds Codex; the `codex` CLI is the program sandbox-agent requires.
            packages=("@zed-industries/codex-acp@0.16.0", "@openai/codex@0.171.0"),
            adapter=Entry("@zed-industries/codex-acp-{platform}/bin/codex-acp"),
            native=Entry("@openai/codex/bin/codex.js", node=True),
            keys=("OPENAI_API_KEY", "CODEX_API_KEY"),
        ),
        AgentSpec(
            id="opencode",
            title="OpenCode",
            # `opencode acp` speaks ACP itself; npm's postinstall puts the platform's binary here.
            packages=("opencode-ai@1.18.33",),
            adapter=Entry("opencode-ai/bin/opencode.exe", args=("acp",)),
            native=Entry("opencode-ai/bin/opencode.exe"),
            keys=("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENROUTER_API_KEY", "GEMINI_API_KEY"),
            defaults={"OPENCODE_DISABLE_AUTOUPDATE": "1"},
        ),
    )
}


def npm_platform() -> str:
    """npm's name for this platform (``linux-x64``), as in per-platform package names."""
    machine = platform.machine().lower()
    return f"{sys.platform}-{_NPM_ARCH.get(machine, machine)}"


def default_agents_dir() -> Path:
    """``<checkout>/.tools/agents``, next to the sandbox-agent binary that bootstrap installs."""
    from foundry.drivers.sandbox.binary import repo_root

    return repo_root() / ".tools" / "agents"


def install_hint(agent_id: str) -> str:
    """How to install ``agent_id``, for messages."""
    return f"run `foundry agents install {agent_id}` on the Foundry host"


def find_node() -> Path | None:
    """The Node.js executable the JavaScript agents run with (resolved: a jail mounts that file)."""
    found = shutil.which("node")
    return Path(found).resolve() if found else None


def _command(entry: Entry, modules: Path, node: Path | None) -> list[str] | None:
    target = entry.resolve(modules)
    if not target.is_file():
        return None
    if entry.node:
        if node is None:
            return None
        return [str(node), str(target), *entry.args]
    return [str(target), *entry.args]


@dataclass(frozen=True)
class InstalledAgent:
    """An agent whose pinned packages are installed and whose programs exist."""

    spec: AgentSpec
    directory: Path
    adapter: list[str]
    native: list[str]


def installed_at(spec: AgentSpec, directory: Path, node: Path | None) -> InstalledAgent | None:
    """``spec`` as installed in ``directory``, if it is complete: the stamp of its pinned versions
    (other versions count as not installed), its programs, and Node.js for the JavaScript ones."""
    # Resolved: the jail mounts the real directory, and the scripts name files inside it.
    directory = directory.resolve()
    try:
        stamp = (directory / STAMP).read_text(encoding="utf-8")
    except OSError:
        return None
    if stamp != spec.stamp():
        return None
    modules = directory / "node_modules"
    adapter = _command(spec.adapter, modules, node)
    native = _command(spec.native, modules, node)
    if adapter is None or native is None:
        return None
    return InstalledAgent(spec, directory, adapter, native)


def installed_agents(agents_dir: Path, node: Path | None = None) -> dict[str, InstalledAgent]:
    """The agents of ``agents_dir`` that can run here (`installed_at`). Cheap: a few stat calls."""
    node = node if node is not None else find_node()
    found: dict[str, InstalledAgent] = {}
    for spec in AGENTS.values():
        agent = installed_at(spec, agents_dir / spec.id, node)
        if agent is not None:
            found[spec.id] = agent
    return found


def _script(comment: str, command: list[str], defaults: Mapping[str, str]) -> str:
    lines = ["#!/bin/sh", f"# {comment}"]
    for name, value in defaults.items():
        # Only a default: the sandbox's environment (the deployment's agent_env) may set it.
        lines.append(f": ${{{name}={shlex.quote(value)}}}; export {name}")
    lines.append(f'exec {shlex.join(command)} "$@"')
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Registrations:
    """What every sandbox gets for the installed agents."""

    #: agent id → the ``agent_processes/<id>-acp`` launcher script.
    launchers: dict[str, str]
    #: agent id → the ``<id>`` program script in sandbox-agent's install directory.
    natives: dict[str, str]
    #: Directories the jail mounts read-only (the installed agents' own).
    read_only: tuple[Path, ...]


def registrations(agents_dir: Path, node: Path | None = None) -> Registrations:
    """The launchers, programs and mounts of the agents installed in ``agents_dir``."""
    installed = installed_agents(agents_dir, node)
    launchers: dict[str, str] = {}
    natives: dict[str, str] = {}
    for agent_id, agent in installed.items():
        title = agent.spec.title
        # Under eof_guard: these adapters do not exit when sandbox-agent closes their stdin.
        guarded = [sys.executable, "-I", "-m", "foundry.drivers.sandbox.eof_guard", *agent.adapter]
        launchers[agent_id] = _script(
            f"{title}'s ACP adapter (foundry agents install {agent_id})", guarded, agent.spec.defaults
        )
        natives[agent_id] = _script(f"{title} (foundry agents install {agent_id})", agent.native, {})
    return Registrations(launchers, natives, tuple(a.directory for a in installed.values()))

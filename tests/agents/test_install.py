"""``foundry agents install`` and ``foundry agents ls``, run as real processes: pinned packages from
npm into the agents directory, idempotent, one-line errors; and what a sandbox gets for an
installed agent."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from foundry.drivers.sandbox.agents import AGENTS, registrations
from foundry.drivers.sandbox.layout import prepare_directory


def foundry(*args: str, agents_dir: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "FOUNDRY_DATA_DIR": str(tmp_path / "data"),
        "FOUNDRY_SANDBOX__AGENTS_DIR": str(agents_dir),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "foundry", "agents", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def node_only_path(tmp_path: Path) -> str:
    """A PATH on which Node.js is found and npm is not."""
    bin_dir = tmp_path / "node-only"
    bin_dir.mkdir()
    node = shutil.which("node")
    assert node is not None
    (bin_dir / "node").symlink_to(node)
    return str(bin_dir)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_installing_what_is_installed_does_nothing_and_needs_no_npm(agents_dir: Path, tmp_path: Path):
    result = foundry(
        "install", "claude", agents_dir=agents_dir, tmp_path=tmp_path, PATH=node_only_path(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"claude: up to date ({AGENTS['claude'].packages[0]})\n"

    listed = foundry("ls", agents_dir=agents_dir, tmp_path=tmp_path)
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if line.startswith("claude "))
    assert "claude    installed; @zed-industries/claude-agent-acp@0.23.1" in line
    assert "keys: ANTHROPIC_API_KEY" in line


def test_an_offline_install_fails_in_one_line_and_leaves_nothing_behind(tmp_path: Path):
    agents = tmp_path / "agents"
    registry = f"http://127.0.0.1:{closed_port()}/"
    result = foundry(
        "install",
        "opencode",
        agents_dir=agents,
        tmp_path=tmp_path,
        npm_config_registry=registry,
        npm_config_fetch_retries="0",
        npm_config_cache=str(tmp_path / "npm-cache"),
    )
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: opencode: could not reach {registry} to download opencode-ai@1.18.33"), (
        line
    )
    assert "ECONNREFUSED" in line
    assert not (agents / "opencode").exists()
    # No half install either (the lock file that serializes installs stays).
    assert [entry.name for entry in agents.iterdir()] == [".install.lock"]

    listed = foundry("ls", agents_dir=agents, tmp_path=tmp_path)
    assert "opencode  not installed (foundry agents install opencode)" in listed.stdout


def test_without_npm_the_install_says_so_in_one_line(tmp_path: Path):
    result = foundry(
        "install", "codex", agents_dir=tmp_path / "agents", tmp_path=tmp_path, PATH=node_only_path(tmp_path)
    )
    assert result.returncode == 1
    assert result.stderr == (
        "Error: codex: npm is not installed (not found on PATH); "
        "install Node.js 20+ with npm to install Codex\n"
    )


def test_an_unknown_agent_is_refused_with_the_choices(tmp_path: Path):
    result = foundry("install", "claude", "gemini", agents_dir=tmp_path / "agents", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "unknown agent 'gemini'; choose from claude, codex, opencode or all" in result.stderr
    assert not (tmp_path / "agents" / "claude").exists()  # nothing was installed


def test_other_versions_than_the_pinned_ones_count_as_not_installed(agents_dir: Path, tmp_path: Path):
    # A copy of the installed agent whose stamp names another version (an older Foundry's pins).
    other = tmp_path / "agents"
    shutil.copytree(agents_dir / "claude", other / "claude", symlinks=True)
    assert set(registrations(other).launchers) == {"claude"}
    (other / "claude" / ".foundry-agent.json").write_text(
        '{"agent": "claude", "packages": ["@zed-industries/claude-agent-acp@0.22.0"]}'
    )
    assert registrations(other).launchers == {}
    listed = foundry("ls", agents_dir=other, tmp_path=tmp_path)
    assert "claude    not installed (foundry agents install claude)" in listed.stdout


def test_a_sandbox_gets_the_launcher_and_the_claude_program_and_loses_them_once_uninstalled(
    agents_dir: Path, tmp_path: Path
):
    found = registrations(agents_dir)
    sandbox = tmp_path / "sandbox"
    prepare_directory(sandbox, found.launchers, found.natives).close()
    install_dir = sandbox / ".local" / "share" / "sandbox-agent" / "bin"
    launcher = install_dir / "agent_processes" / "claude-acp"
    program = install_dir / "claude"
    # The program is the Claude Code the adapter runs, and answers as sandbox-agent asks it to.
    version = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == "2.1.83 (Claude Code)", version.stderr
    script = launcher.with_name("claude-acp.launch").read_text()
    assert launcher.read_text().endswith('exec nice -n 19 "$0.launch" "$@"\n')
    assert (
        ": ${CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1}; export CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"
        in script
    )
    assert (
        f"{agents_dir.resolve()}/claude/node_modules/@zed-industries/claude-agent-acp/dist/index.js" in script
    )
    assert os.access(launcher, os.X_OK)
    assert found.read_only == ((agents_dir / "claude").resolve(),)

    # Restarted after the agent was removed: sandbox-agent must not see it as installed any more.
    prepare_directory(sandbox, {}, {}).close()
    assert not launcher.exists()
    assert not launcher.with_name("claude-acp.launch").exists()
    assert not program.exists()

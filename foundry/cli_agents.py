"""``foundry agents``: install the real coding agents that sandboxes run, and list them."""

from __future__ import annotations

import json
import time

import click

from foundry.config import get_settings


class _Failed(click.ClickException):
    """An install that failed: one line on stderr, exit code 1, no traceback."""


@click.group("agents")
def agents() -> None:
    """Claude Code, Codex and OpenCode: install them for every sandbox (from npm, pinned versions)."""


@agents.command("install")
@click.argument("names", nargs=-1, required=True)
def install(names: tuple[str, ...]) -> None:
    """Install agents by id (claude, codex, opencode) or `all`; installed ones are left as they are.

    Sandboxes started afterwards run them; each organization's admins set the provider keys in the
    dashboard (Settings, agent credentials).
    """
    from foundry.agents_install import AgentInstallError, install_agent
    from foundry.drivers.sandbox.agents import AGENTS

    wanted = list(AGENTS) if "all" in names else list(dict.fromkeys(names))
    unknown = [name for name in wanted if name not in AGENTS]
    if unknown:
        raise click.BadParameter(
            f"unknown agent {unknown[0]!r}; choose from {', '.join(AGENTS)} or all", param_hint="NAMES"
        )
    agents_dir = get_settings().agents_dir
    for name in wanted:
        spec = AGENTS[name]
        started = time.monotonic()
        try:
            result = install_agent(name, agents_dir)
        except AgentInstallError as exc:
            raise _Failed(f"{name}: {exc}") from exc
        if result.changed:
            took = time.monotonic() - started
            click.echo(f"{name}: installed {' '.join(spec.packages)} in {result.directory} ({took:.0f} s)")
        else:
            click.echo(f"{name}: up to date ({' '.join(spec.packages)})")


@agents.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of one line per agent.")
def ls(as_json: bool) -> None:
    """List the agents, whether they are installed here, and the keys each reads."""
    from foundry.agents_install import agent_status

    agents_dir = get_settings().agents_dir
    status = agent_status(agents_dir)
    if as_json:
        click.echo(json.dumps({"agentsDir": str(agents_dir), "agents": status}, indent=2))
        return
    for entry in status:
        state = "installed" if entry["installed"] else f"not installed (foundry agents install {entry['id']})"
        packages = " ".join(entry["packages"])  # type: ignore[arg-type]
        keys = ", ".join(entry["keys"])  # type: ignore[arg-type]
        click.echo(f"{entry['id']:<9} {state}; {packages}; keys: {keys}")

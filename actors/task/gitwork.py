"""Git questions the task asks its sandbox beyond `foundry.drivers.sandbox.git`: what would be lost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from foundry.drivers.sandbox import GitError
from foundry.drivers.sandbox import git as sgit
from foundry.drivers.sandbox.client import SandboxAgentClient

# Commits of the task branch that origin does not have: against origin/<branch> when it was pushed,
# else every commit that no remote-tracking ref contains. No network access (last fetched state).
_AHEAD_SCRIPT = """set -e
ref="refs/heads/$1"
if ! git rev-parse --verify --quiet "$ref" >/dev/null; then echo 0; exit 0; fi
if git rev-parse --verify --quiet "refs/remotes/origin/$1" >/dev/null; then
  git rev-list --count "refs/remotes/origin/$1..$ref"
else
  git rev-list --count "$ref" --not --remotes
fi
"""


@dataclass(frozen=True)
class UnpushedWork:
    """Uncommitted changes (untracked files included) and commits not on the remote."""

    changes: list[sgit.FileChange]
    commits_ahead: int

    @property
    def empty(self) -> bool:
        return not self.changes and self.commits_ahead == 0

    def describe(self, branch: str, limit: int = 5) -> str:
        """E.g. ``2 uncommitted changes (NOTES.md, src/a.py) and 1 commit not pushed to origin/x``."""
        parts = []
        if self.changes:
            names = ", ".join(c.path for c in self.changes[:limit])
            more = f" and {len(self.changes) - limit} more" if len(self.changes) > limit else ""
            plural = "s" if len(self.changes) != 1 else ""
            parts.append(f"{len(self.changes)} uncommitted change{plural} ({names}{more})")
        if self.commits_ahead:
            plural = "s" if self.commits_ahead != 1 else ""
            parts.append(f"{self.commits_ahead} commit{plural} not pushed to origin/{branch}")
        return " and ".join(parts)

    def as_json(self) -> dict[str, Any]:
        return {
            "uncommitted": [{"path": c.path, "kind": c.kind} for c in self.changes],
            "commitsAhead": self.commits_ahead,
        }


async def unpushed_work(client: SandboxAgentClient, branch: str) -> UnpushedWork:
    """What archiving the sandbox now would destroy.

    Raises:
        GitError: the checkout could not be inspected.
    """
    changes = await sgit.status(client)
    result = await client.run_process(
        "sh",
        ["-c", _AHEAD_SCRIPT, "sh", branch],
        cwd=client.endpoint.workdir,
        env={"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"},
        timeout_ms=60_000,
    )
    if not result.ok or not result.stdout.strip().isdigit():
        raise GitError(
            f"could not count the commits of {branch} that are not pushed (exit code {result.exit_code})"
            f"\n{result.stderr.strip()[-2000:]}",
            None,
            "git",
            result.exit_code,
            result.stderr.strip()[-2000:],
        )
    return UnpushedWork(changes, int(result.stdout.strip()))


def file_tree(paths: list[str]) -> list[dict[str, Any]]:
    """Nest sorted paths into ``[{name, path, isDir, children?}]``, directories first."""
    root: dict[str, Any] = {}
    for path in paths:
        node = root
        parts = path.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node.setdefault(parts[-1], None)

    def build(tree: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
        dirs = sorted(k for k, v in tree.items() if v is not None)
        files = sorted(k for k, v in tree.items() if v is None)
        out: list[dict[str, Any]] = []
        for name in dirs:
            path = f"{prefix}{name}"
            out.append({"name": name, "path": path, "isDir": True, "children": build(tree[name], f"{path}/")})
        out.extend({"name": name, "path": f"{prefix}{name}", "isDir": False} for name in files)
        return out

    return build(root, "")

"""Fetch and push for a sandbox's checkout: the network part outside the agent's jail, the rest in it.

The commands that carry the GitHub token run through a `RemoteGit` (the sandbox provider's
`foundry.drivers.sandbox.remote_git`, reached through the sandbox actor), never inside the agent's
jail. What the checkout needs afterwards (remote-tracking refs, the default branch, a pushed branch's
upstream) is then set through sandbox-agent like every other local git command, without a token.
The URL is always the task's, never read from the checkout, whose configuration the agent controls.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from foundry.drivers.sandbox import GitError
from foundry.drivers.sandbox.client import ProcessResult, SandboxAgentClient
from foundry.drivers.sandbox.git_run import git_failure, run_git, run_script
from foundry.drivers.sandbox.remote_git import FETCH_REFS_MARK

__all__ = ["Fetched", "RemoteGit", "fetch_into_checkout", "push_commit"]

#: Runs one network command for the checkout: the body of the sandbox actor's ``remote_git``.
RemoteGit = Callable[[dict[str, Any]], Awaitable[ProcessResult]]

_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_TRACKING = "refs/remotes/origin/"
# Applies "<sha> <ref>" pairs ($1 $2, $3 $4, …) and deletes the refs after "--" in one transaction.
_UPDATE_REFS = """set -e
{
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do printf 'update %s %s\\n' "$2" "$1"; shift 2; done
  [ $# -gt 0 ] && shift
  for ref in "$@"; do printf 'delete %s\\n' "$ref"; done
} | git update-ref --stdin
"""


@dataclass(frozen=True)
class Fetched:
    """What a fetch found: each branch's commit, and the remote's default branch (None if empty)."""

    branches: dict[str, str]
    default_branch: str | None


async def _remote(
    remote: RemoteGit,
    body: dict[str, Any],
    *,
    action: str,
    token: str | None,
    branch: str | None,
    timeout_ms: int,
) -> ProcessResult:
    result = await remote({**body, "token": token, "timeoutMs": timeout_ms})
    if not result.ok:
        raise git_failure(action, result, token=token, branch=branch, timeout_ms=timeout_ms)
    return result


def _parse_fetch(stdout: str) -> Fetched:
    head, _, refs = stdout.partition(FETCH_REFS_MARK)
    branches: dict[str, str] = {}
    for line in refs.splitlines():
        sha, _, ref = line.strip().partition(" ")
        if _SHA.match(sha) and ref.startswith(_TRACKING) and ref != f"{_TRACKING}HEAD":
            branches[ref.removeprefix(_TRACKING)] = sha
    default = None
    for line in head.splitlines():
        if line.startswith("ref: refs/heads/") and line.endswith("\tHEAD"):
            default = line.removeprefix("ref: refs/heads/").removesuffix("\tHEAD")
    return Fetched(branches, default if default in branches else None)


async def fetch_into_checkout(
    client: SandboxAgentClient,
    remote: RemoteGit,
    url: str,
    token: str | None,
    *,
    cwd: str | None,
    timeout_ms: int,
    action: str = "fetch",
) -> Fetched:
    """Fetch every branch of ``url`` into the checkout's object store (outside the jail), then set
    ``origin/*`` to them (branches gone from the remote are pruned) and ``origin/HEAD``."""
    result = await _remote(
        remote, {"op": "fetch", "url": url}, action=action, token=token, branch=None, timeout_ms=timeout_ms
    )
    fetched = _parse_fetch(result.stdout)
    listed = await run_git(
        client, ["for-each-ref", "--format=%(refname)", _TRACKING], action="fetch", cwd=cwd
    )
    stale = [
        ref
        for ref in listed.stdout.split()
        if ref != f"{_TRACKING}HEAD" and ref.removeprefix(_TRACKING) not in fetched.branches
    ]
    pairs = [item for name, sha in sorted(fetched.branches.items()) for item in (sha, f"{_TRACKING}{name}")]
    if pairs or stale:
        await run_script(client, _UPDATE_REFS, [*pairs, "--", *stale], action="fetch", cwd=cwd)
    if fetched.default_branch is not None:
        await run_git(
            client,
            ["symbolic-ref", f"{_TRACKING}HEAD", f"{_TRACKING}{fetched.default_branch}"],
            action="fetch",
            cwd=cwd,
        )
    return fetched


async def push_commit(
    client: SandboxAgentClient,
    remote: RemoteGit,
    url: str,
    branch: str,
    token: str | None,
    *,
    cwd: str | None,
    timeout_ms: int,
) -> str:
    """Push local ``branch`` (its commit, read from the checkout) to ``branch`` of ``url``, never
    forced; then ``origin/<branch>`` and the branch's upstream follow. Returns the pushed commit."""
    resolved = await run_git(
        client,
        ["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}"],
        action="push",
        cwd=cwd,
    )
    sha = resolved.stdout.strip()
    if not _SHA.match(sha):
        raise GitError(f"git push failed: local branch {branch!r} does not name a commit")
    await _remote(
        remote,
        {"op": "push", "url": url, "sha": sha, "branch": branch},
        action="push",
        token=token,
        branch=branch,
        timeout_ms=timeout_ms,
    )
    await run_git(client, ["update-ref", f"{_TRACKING}{branch}", sha], action="push", cwd=cwd)
    await run_git(
        client,
        ["branch", f"--set-upstream-to=origin/{branch}", branch],
        action="push",
        cwd=cwd,
        check=False,  # only a convenience for someone working in the checkout
    )
    return sha

